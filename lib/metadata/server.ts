/**
 * An HTTP metadata server that answers like upstream's wheel `mooncake_http_metadata_server`
 * (mooncake-wheel/mooncake/http_metadata_server.py, aiohttp), plus what upstream lacks: entry TTLs,
 * persistence, size limits, an allow-list and `GET /health`.
 *
 * Upstream semantics reproduced (checked live against 0.3.13.post1 by test/interop/metadata-conformance):
 * - one route (`/metadata`); the query `key` is URL-decoded (`+` is a space, the first `key` wins) and
 *   `.strip()`ped with Python's notion of whitespace; an empty key → 400 `metadata key is required`
 *   (checked before the method, so `POST` without key is 400 too);
 * - GET → 200 raw stored bytes (`Content-Type: application/json`) or 404 `metadata not found`;
 * - PUT → 200 `metadata updated`; a key containing `rpc_meta` that already exists →
 *   400 `Duplicate rpc_meta key not allowed`;
 * - DELETE → 200 `metadata deleted` or 404 `metadata not found`;
 * - any other method → 405 `Method not allowed`;
 * - text answers carry `Content-Type: application/json; charset=utf-8`; unknown paths get aiohttp's
 *   404 `404: Not Found` (text/plain); bodies over 1 MiB get aiohttp's 413 text.
 *
 * Intentional differences (all configurable or additive):
 * - re-PUT of an existing rpc_meta key with a byte-identical body → 200 `metadata unchanged` (like the
 *   C++ server in mooncake_master) and refreshes the entry's TTL; a different body is still 400.
 *   `identicalRpcMetaPut: 'reject'` restores the Python server's 400.
 * - `GET /health` → 200 `OK`; `GET /metrics` → the server's metrics (Prometheus text); key/entry/size limits → 414 / 507; bodies arriving at once beyond a
 *   budget → 503; a full disk → 507. A change is applied only once it is stored: a refused or failed
 *   write changes nothing.
 */
import { once } from 'node:events';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as path from 'node:path';
import { allowList } from '../util/allow-list';
import { intOption } from '../util/options';
import { DEFAULT_BIND_HOST } from '../util/defaults';
import { MooncakeError } from '../errors';
import { EntryStore } from './entries';
import { MetadataServerMetrics, type MetadataServerStats } from './metrics';
import { PROMETHEUS_CONTENT_TYPE, renderText } from '../metrics/text';
import type { MetricFamily } from '../metrics/types';
import { ClientGone, readBody } from './request-body';
import { DATA_FILE, DEFAULT_LOG_SLACK_BYTES, PersistError } from './persistence';

export interface MetadataServerLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface MetadataServerOptions {
  /** Route of the metadata API. Default `/metadata`. */
  path?: string;
  /**
   * Entries not PUT again within this many ms expire (a GET of an expired key is 404). Default: never.
   * Upstream peers PUT `rpc_meta` only once, so only enable a TTL when every publisher re-PUTs its keys
   * (an identical rpc_meta re-PUT is accepted and refreshes the TTL).
   */
  ttlMs?: number;
  /** Directory for `metadata.json`; entries survive a restart. Default: memory only. */
  dataDir?: string;
  /** Longest key in UTF-8 bytes (after decoding); longer → 414. Default 4096. */
  maxKeyBytes?: number;
  /** Largest value in bytes; larger → 413. Default 1 MiB (upstream aiohttp's `client_max_size`). */
  maxValueBytes?: number;
  /** Most live entries; a PUT of a new key beyond it → 507. Default 1,000,000. */
  maxEntries?: number;
  /**
   * Most bytes of keys and values held in all; a PUT that would go past it → 507, checked before the
   * change is accepted (from Content-Length when the client waits for `100 Continue`). Default 1 GiB.
   */
  maxStoreBytes?: number;
  /** Most bytes of request bodies being received at once; a PUT beyond it → 503. Default 64 MiB. */
  maxBufferedBytes?: number;
  /**
   * With `dataDir`: the log is compacted once it is larger than twice the live entries plus this many
   * bytes (overwritten and deleted entries are what makes it larger). Default 64 MiB.
   */
  logSlackBytes?: number;
  /**
   * Numeric IPs allowed to connect (any IPv6 spelling; IPv4-mapped peers match their IPv4 entry).
   * Others are closed before a byte is read and counted in `stats().refusedConnections`. Default:
   * anyone (restrict with `--host` and the network, as with upstream's server).
   */
  allowedPeers?: string[];
  /** How to answer a PUT of an existing rpc_meta key with an identical body. Default 'accept'. */
  identicalRpcMetaPut?: 'accept' | 'reject';
  /** Where diagnostics go. Default: console (warnings and errors only). null = silent. */
  logger?: MetadataServerLogger | null;
  /** Monotonic clock in ms, for tests. Default `performance.now()`. */
  now?: () => number;
  /** Called after every answer (an access log; `--access-log` in the CLI). Exceptions are ignored. */
  onRequest?: (event: RequestEvent) => void;
}

export interface RequestEvent {
  method: string;
  /** The decoded, stripped key, when the request reached the metadata route with one. */
  key?: string;
  status: number;
  /** Bytes of the answer body. */
  bytes: number;
}

export interface ListenInfo {
  host: string;
  port: number;
  /** `http://host:port/metadata` (the connection string peers use). */
  url: string;
}

export type { MetadataServerStats } from './metrics';

const JSON_TEXT = 'application/json; charset=utf-8';
const PLAIN_TEXT = 'text/plain; charset=utf-8';

const DEFAULTS = {
  path: '/metadata',
  maxKeyBytes: 4096,
  maxValueBytes: 1024 * 1024,
  maxEntries: 1_000_000,
  maxStoreBytes: 1024 * 1024 * 1024,
  maxBufferedBytes: 64 * 1024 * 1024,
};

/** Python's `str.strip()` whitespace (`str.isspace()`), which upstream applies to the key. */
const PY_WHITESPACE = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP = new RegExp(`^[${PY_WHITESPACE}]+|[${PY_WHITESPACE}]+$`, 'g');

export function pythonStrip(s: string): string {
  return s.replace(PY_STRIP, '');
}

export class MetadataServer {
  private readonly options: {
    path: string;
    ttlMs: number;
    dataDir: string | undefined;
    maxKeyBytes: number;
    maxValueBytes: number;
    maxEntries: number;
    maxStoreBytes: number;
    maxBufferedBytes: number;
    logSlackBytes: number;
    identicalRpcMetaPut: 'accept' | 'reject';
  };
  private readonly log: MetadataServerLogger;
  private readonly now: () => number;
  private readonly onRequest: ((event: RequestEvent) => void) | undefined;
  private readonly allowed: ((address: string | undefined) => boolean) | undefined;
  private readonly keyOf = new WeakMap<http.ServerResponse, string>();
  private readonly store: EntryStore;
  private readonly bodies = { bytes: 0 };
  private refused = 0;
  private readonly metrics = new MetadataServerMetrics();
  private readonly startedAt = new WeakMap<http.ServerResponse, number>();
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private listening: Promise<ListenInfo> | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: MetadataServerOptions = {}) {
    const route = options.path ?? DEFAULTS.path;
    if (!route.startsWith('/')) throw new MooncakeError('INVALID_CONFIG', `path must start with '/', got '${route}'`);
    this.options = {
      path: route,
      ttlMs: nonNegative(options.ttlMs, 0, 'ttlMs'),
      dataDir: options.dataDir,
      maxKeyBytes: positiveInt(options.maxKeyBytes, DEFAULTS.maxKeyBytes, 'maxKeyBytes'),
      maxValueBytes: positiveInt(options.maxValueBytes, DEFAULTS.maxValueBytes, 'maxValueBytes'),
      maxEntries: positiveInt(options.maxEntries, DEFAULTS.maxEntries, 'maxEntries'),
      maxStoreBytes: positiveInt(options.maxStoreBytes, DEFAULTS.maxStoreBytes, 'maxStoreBytes'),
      maxBufferedBytes: positiveInt(options.maxBufferedBytes, DEFAULTS.maxBufferedBytes, 'maxBufferedBytes'),
      logSlackBytes: positiveInt(options.logSlackBytes, DEFAULT_LOG_SLACK_BYTES, 'logSlackBytes'),
      identicalRpcMetaPut: options.identicalRpcMetaPut ?? 'accept',
    };
    this.allowed = allowList(options.allowedPeers, 'allowedPeers');
    this.log =
      options.logger === null
        ? { info() {}, warn() {}, error() {} }
        : (options.logger ?? { info() {}, warn: (m) => console.warn(m), error: (m) => console.error(m) });
    this.now = options.now ?? (() => performance.now());
    this.store = new EntryStore({ ttlMs: this.options.ttlMs, maxEntries: this.options.maxEntries, maxStoreBytes: this.options.maxStoreBytes, now: this.now, log: this.log });
    this.onRequest = options.onRequest;
    this.server = http.createServer();
    this.server.on('request', (req, res) => this.handle(req, res, false));
    // Installing a checkContinue listener stops Node from answering `100 Continue` blindly: we send it
    // only when the PUT is going to be read, and refuse oversized bodies before they are sent.
    this.server.on('checkContinue', (req, res) => this.handle(req, res, true));
    this.server.on('connection', (socket: Socket) => {
      if (this.allowed && !this.allowed(socket.remoteAddress)) {
        this.refused++;
        socket.destroy();
        return;
      }
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    // Malformed requests get node:http's default answers (400, 431 for huge headers, 408 on timeout).
    this.server.requestTimeout = 60_000;
    this.server.headersTimeout = 30_000;
  }

  /** The route of the metadata API, e.g. `/metadata`. */
  get path(): string {
    return this.options.path;
  }

  /** The persistence file (an append-only log), when `dataDir` is set. */
  get dataFile(): string | undefined {
    return this.options.dataDir === undefined ? undefined : path.join(this.options.dataDir, DATA_FILE);
  }

  stats(): MetadataServerStats {
    return {
      entries: this.store.count(),
      storeBytes: this.store.storeBytes,
      logBytes: this.store.log?.bytes ?? 0,
      logCompactions: this.store.log?.compactions ?? 0,
      refusedConnections: this.refused,
      bufferedBytes: this.bodies.bytes,
    };
  }

  /** The server's metrics for a `MetricsRegistry` (docs/metrics.md). */
  collectMetrics(): MetricFamily[] {
    return this.metrics.families(this.stats());
  }

  /**
   * Loads persisted entries (if `dataDir`) and starts listening. `port` 0 (default) picks a free port;
   * `host` defaults to 127.0.0.1 (pass '0.0.0.0' to serve other machines). The URL to give peers is in the
   * result.
   */
  listen(port = 0, host: string = DEFAULT_BIND_HOST): Promise<ListenInfo> {
    if (this.closing) return Promise.reject(new MooncakeError('CLOSED', 'the metadata server is closed'));
    if (this.listening) return this.listening;
    this.listening = (async () => {
      if (this.options.dataDir !== undefined) await this.store.open(this.options.dataDir, this.options.logSlackBytes);
      this.server.listen(port, host);
      try {
        await once(this.server, 'listening');
      } catch (cause) {
        const e = cause as NodeJS.ErrnoException;
        throw new MooncakeError(
          'INVALID_CONFIG',
          `the metadata server cannot listen on ${host}:${port}: ${e.code === 'EADDRINUSE' ? 'the port is already in use' : e.message}`,
          { cause, details: { host, port } },
        );
      }
      const address = this.server.address() as AddressInfo;
      if (this.options.ttlMs > 0) {
        const every = Math.min(Math.max(this.options.ttlMs, 250), 30_000);
        this.sweepTimer = setInterval(() => this.store.sweep(), every);
        this.sweepTimer.unref();
      }
      const hostForUrl = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
      return { host: address.address, port: address.port, url: `http://${hostForUrl}:${address.port}${this.options.path}` };
    })();
    return this.listening;
  }

  /**
   * Stops accepting connections, closes idle keep-alive sockets, lets in-flight requests finish (for at
   * most 2 s) and closes the log (every answered change is already on disk). Idempotent.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      if (this.sweepTimer) clearInterval(this.sweepTimer);
      if (this.listening) await this.listening.catch(() => undefined);
      if (this.server.listening) {
        const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
        this.server.closeIdleConnections();
        // Connections that finish their request later become idle: close them as they do.
        const idle = setInterval(() => this.server.closeIdleConnections(), 25);
        const force = setTimeout(() => {
          for (const s of this.sockets) s.destroy();
        }, 2000);
        await closed;
        clearInterval(idle);
        clearTimeout(force);
      }
      await this.store.close();
    })();
    return this.closing;
  }

  /** `await using server = new MetadataServer()`: closes it (the same as close(); idempotent). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** A snapshot of the live (unexpired) entries, values decoded as UTF-8. */
  entries(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [key, entry] of this.store.entries()) out.set(key, entry.value.toString('utf8'));
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Request handling

  private handle(req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): void {
    this.startedAt.set(res, performance.now());
    this.route(req, res, expectContinue).catch((e: unknown) => {
      if (e instanceof ClientGone) {
        res.destroy();
        return;
      }
      this.log.error(`metadata-server: ${req.method} ${req.url} failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      if (!res.headersSent) this.reply(res, 500, 'internal server error', JSON_TEXT, expectContinue);
      else res.destroy();
    });
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): Promise<void> {
    const raw = req.url ?? '/';
    const q = raw.indexOf('?');
    const rawPath = q < 0 ? raw : raw.slice(0, q);
    const query = q < 0 ? '' : raw.slice(q + 1).split('#')[0];
    const route = decodePath(rawPath);
    const method = req.method ?? '';

    if (route === '/health' && this.options.path !== '/health') {
      if (method === 'GET' || method === 'HEAD') return this.reply(res, 200, 'OK', PLAIN_TEXT, expectContinue);
      return this.reply(res, 405, 'Method not allowed', JSON_TEXT, expectContinue);
    }
    if (route === '/metrics' && this.options.path !== '/metrics') {
      if (method === 'GET' || method === 'HEAD') return this.reply(res, 200, renderText(this.collectMetrics()), PROMETHEUS_CONTENT_TYPE, expectContinue);
      return this.reply(res, 405, 'Method not allowed', JSON_TEXT, expectContinue);
    }
    if (route !== this.options.path) return this.reply(res, 404, '404: Not Found', PLAIN_TEXT, expectContinue);

    const key = pythonStrip(new URLSearchParams(query).get('key') ?? '');
    if (key.length > 0) this.keyOf.set(res, key);
    if (key.length === 0) return this.reply(res, 400, 'metadata key is required', JSON_TEXT, expectContinue);
    if (method !== 'GET' && method !== 'PUT' && method !== 'DELETE') {
      return this.reply(res, 405, 'Method not allowed', JSON_TEXT, expectContinue);
    }
    const keyBytes = Buffer.byteLength(key, 'utf8');
    if (keyBytes > this.options.maxKeyBytes) {
      return this.reply(res, 414, `metadata key too long: ${keyBytes} bytes (limit ${this.options.maxKeyBytes})`, JSON_TEXT, expectContinue);
    }

    switch (method) {
      case 'GET': {
        const entry = this.store.live(key);
        if (!entry) return this.reply(res, 404, 'metadata not found', JSON_TEXT, expectContinue);
        return this.reply(res, 200, entry.value, 'application/json', expectContinue);
      }
      case 'DELETE':
        return this.store.oneAtATime(key, async () => {
          if (!this.store.live(key)) return this.reply(res, 404, 'metadata not found', JSON_TEXT, expectContinue);
          if (await this.stored(res, this.store.remove(key), expectContinue)) this.reply(res, 200, 'metadata deleted', JSON_TEXT, expectContinue);
        });
      case 'PUT':
        return this.put(key, req, res, expectContinue);
    }
  }

  private async put(key: string, req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): Promise<void> {
    const limit = this.options.maxValueBytes;
    const tooLarge = `Maximum request body size ${limit} exceeded.`;
    if (expectContinue) {
      // Refuse before the client sends the body (it waits for `100 Continue`).
      const declared = Number(req.headers['content-length'] ?? NaN);
      if (declared > limit) return this.reply(res, 413, tooLarge, PLAIN_TEXT, true);
      const full = Number.isSafeInteger(declared) ? this.store.whyFull(key, declared) : undefined;
      if (full) return this.reply(res, 507, full, JSON_TEXT, true);
      res.writeContinue();
    }

    const body = await readBody(req, limit, this.bodies, this.options.maxBufferedBytes);
    if (body === 'too-large') return this.reply(res, 413, tooLarge, PLAIN_TEXT, false);
    if (body === 'busy') {
      res.setHeader('Retry-After', '1');
      return this.reply(res, 503, `metadata server busy: request bodies being received exceed ${this.options.maxBufferedBytes} bytes (maxBufferedBytes); retry`, JSON_TEXT, false);
    }

    return this.store.oneAtATime(key, async () => {
      const existing = this.store.live(key);
      if (existing && key.includes('rpc_meta')) {
        if (this.options.identicalRpcMetaPut !== 'accept' || !existing.value.equals(body)) {
          return this.reply(res, 400, 'Duplicate rpc_meta key not allowed', JSON_TEXT, false);
        }
        if (await this.stored(res, this.store.touch(key, existing), false)) this.reply(res, 200, 'metadata unchanged', JSON_TEXT, false);
        return;
      }
      const full = this.store.whyFull(key, body.length);
      if (full) return this.reply(res, 507, full, JSON_TEXT, false);
      if (await this.stored(res, this.store.put(key, body), false)) this.reply(res, 200, 'metadata updated', JSON_TEXT, false);
    });
  }

  /** Waits for a change to be stored; if it could not be, answers 507 (disk full) or 500 and returns false. */
  private async stored(res: http.ServerResponse, change: Promise<void>, expectContinue: boolean): Promise<boolean> {
    try {
      await change;
      return true;
    } catch (e) {
      const err = e instanceof PersistError ? e : new PersistError(String(e), undefined);
      this.log.error(`metadata-server: ${err.message}`);
      if (err.noSpace) this.reply(res, 507, `insufficient storage: the change was not stored (${err.code}): ${err.message}`, JSON_TEXT, expectContinue);
      else this.reply(res, 500, `the change was not stored: it could not be persisted (${err.message})`, JSON_TEXT, expectContinue);
      return false;
    }
  }

  private reply(res: http.ServerResponse, status: number, body: string | Buffer, contentType: string, expectContinue: boolean): void {
    if (res.headersSent || res.destroyed) return;
    const data = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    res.statusCode = status;
    res.setHeader('Content-Type', contentType);
    res.setHeader('Content-Length', data.length);
    // The client of an `Expect: 100-continue` request we answered early will not send its body; the
    // connection cannot be reused reliably.
    // While closing, finish the connection with this answer instead of keeping it alive.
    if (expectContinue || this.closing) res.setHeader('Connection', 'close');
    res.end(data);
    this.metrics.answered(res.req.method ?? '', status, (performance.now() - (this.startedAt.get(res) ?? performance.now())) / 1000);
    if (this.onRequest) {
      try {
        this.onRequest({ method: res.req.method ?? '', key: this.keyOf.get(res), status, bytes: data.length });
      } catch {
        // an observer must not break the server
      }
    }
  }
}

function decodePath(p: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    return p;
  }
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  return intOption(name, value) ?? fallback;
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new MooncakeError('INVALID_CONFIG', `${name} must be a non-negative number, got ${String(value)}`);
  return value;
}
