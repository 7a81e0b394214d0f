/**
 * An HTTP metadata server that answers like upstream's wheel `mooncake_http_metadata_server`
 * (mooncake-wheel/mooncake/http_metadata_server.py, aiohttp), plus what upstream lacks: entry TTLs,
 * file-backed persistence, size limits and `GET /health`.
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
 * - `GET /health` → 200 `OK`; key/entry limits → 414 / 507.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as path from 'node:path';
import { DEFAULT_BIND_HOST } from '../defaults';
import { MooncakeError } from '../errors';

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

interface Entry {
  value: Buffer;
  /** Monotonic deadline, or Infinity. */
  expiresAt: number;
  /** Wall-clock time of the last PUT (persisted, to expire entries across restarts). */
  updatedAt: number;
}

const JSON_TEXT = 'application/json; charset=utf-8';
const PLAIN_TEXT = 'text/plain; charset=utf-8';
const DATA_FILE = 'metadata.json';
const FILE_FORMAT = 'mooncake-node-metadata';

const DEFAULTS = {
  path: '/metadata',
  maxKeyBytes: 4096,
  maxValueBytes: 1024 * 1024,
  maxEntries: 1_000_000,
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
    identicalRpcMetaPut: 'accept' | 'reject';
  };
  private readonly log: MetadataServerLogger;
  private readonly now: () => number;
  private readonly onRequest: ((event: RequestEvent) => void) | undefined;
  private readonly keyOf = new WeakMap<http.ServerResponse, string>();
  private readonly store = new Map<string, Entry>();
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private listening: Promise<ListenInfo> | undefined;
  private closing: Promise<void> | undefined;
  // Group commit for persistence: every mutation bumps `generation`; a write persists a snapshot.
  private generation = 0;
  private persistedGeneration = 0;
  private writing: Promise<void> | undefined;
  private tmpCounter = 0;

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
      identicalRpcMetaPut: options.identicalRpcMetaPut ?? 'accept',
    };
    this.log =
      options.logger === null
        ? { info() {}, warn() {}, error() {} }
        : (options.logger ?? { info() {}, warn: (m) => console.warn(m), error: (m) => console.error(m) });
    this.now = options.now ?? (() => performance.now());
    this.onRequest = options.onRequest;
    this.server = http.createServer();
    this.server.on('request', (req, res) => this.handle(req, res, false));
    // Installing a checkContinue listener stops Node from answering `100 Continue` blindly: we send it
    // only when the PUT is going to be read, and refuse oversized bodies before they are sent.
    this.server.on('checkContinue', (req, res) => this.handle(req, res, true));
    this.server.on('connection', (socket: Socket) => {
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

  /** The persistence file, when `dataDir` is set. */
  get dataFile(): string | undefined {
    return this.options.dataDir === undefined ? undefined : path.join(this.options.dataDir, DATA_FILE);
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
      if (this.options.dataDir !== undefined) await this.load();
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
        this.sweepTimer = setInterval(() => this.sweep(), every);
        this.sweepTimer.unref();
      }
      const hostForUrl = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
      return { host: address.address, port: address.port, url: `http://${hostForUrl}:${address.port}${this.options.path}` };
    })();
    return this.listening;
  }

  /**
   * Stops accepting connections, closes idle keep-alive sockets, lets in-flight requests finish (for at
   * most 2 s) and writes pending state. Idempotent.
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
      if (this.options.dataDir !== undefined && this.persistedGeneration < this.generation) {
        await this.persist().catch((e: unknown) => this.log.error(`metadata-server: final write of ${this.dataFile} failed: ${String(e)}`));
      }
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
    const now = this.now();
    for (const [key, entry] of this.store) if (entry.expiresAt > now) out.set(key, entry.value.toString('utf8'));
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Request handling

  private handle(req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): void {
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
        const entry = this.live(key);
        if (!entry) return this.reply(res, 404, 'metadata not found', JSON_TEXT, expectContinue);
        return this.reply(res, 200, entry.value, 'application/json', expectContinue);
      }
      case 'DELETE': {
        if (!this.live(key)) return this.reply(res, 404, 'metadata not found', JSON_TEXT, expectContinue);
        this.store.delete(key);
        if (!(await this.persistOrFail(res, expectContinue))) return;
        return this.reply(res, 200, 'metadata deleted', JSON_TEXT, expectContinue);
      }
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
      res.writeContinue();
    }

    const body = await readBody(req, limit);
    if (body === undefined) {
      // Answer now; keep draining (bounded) so the client can read the answer instead of a reset.
      this.reply(res, 413, tooLarge, PLAIN_TEXT, false);
      return;
    }

    const existing = this.live(key);
    if (existing && key.includes('rpc_meta')) {
      if (this.options.identicalRpcMetaPut === 'accept' && existing.value.equals(body)) {
        existing.expiresAt = this.expiry();
        existing.updatedAt = Date.now();
        if (!(await this.persistOrFail(res, false))) return;
        return this.reply(res, 200, 'metadata unchanged', JSON_TEXT, false);
      }
      return this.reply(res, 400, 'Duplicate rpc_meta key not allowed', JSON_TEXT, false);
    }
    if (!existing && this.liveCount() >= this.options.maxEntries) {
      return this.reply(
        res,
        507,
        `metadata store is full: ${this.options.maxEntries} entries (maxEntries); delete stale keys or raise the limit`,
        JSON_TEXT,
        false,
      );
    }
    this.store.delete(key); // re-insert so the map keeps PUT order
    this.store.set(key, { value: body, expiresAt: this.expiry(), updatedAt: Date.now() });
    if (!(await this.persistOrFail(res, false))) return;
    return this.reply(res, 200, 'metadata updated', JSON_TEXT, false);
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
    if (this.onRequest) {
      try {
        this.onRequest({ method: res.req.method ?? '', key: this.keyOf.get(res), status, bytes: data.length });
      } catch {
        // an observer must not break the server
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Entries and TTL

  private expiry(): number {
    return this.options.ttlMs > 0 ? this.now() + this.options.ttlMs : Infinity;
  }

  private live(key: string): Entry | undefined {
    const entry = this.store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.store.delete(key);
      this.generation++;
      return undefined;
    }
    return entry;
  }

  private liveCount(): number {
    if (this.options.ttlMs > 0) this.sweep();
    return this.store.size;
  }

  private sweep(): void {
    const now = this.now();
    let removed = 0;
    for (const [key, entry] of this.store) {
      if (entry.expiresAt <= now) {
        this.store.delete(key);
        removed++;
      }
    }
    // Expired entries also expire on load (their updatedAt is persisted), so no write is needed here.
    if (removed > 0) this.generation++;
  }

  // ---------------------------------------------------------------------------------------------
  // Persistence

  private async persistOrFail(res: http.ServerResponse, expectContinue: boolean): Promise<boolean> {
    this.generation++;
    if (this.options.dataDir === undefined) return true;
    try {
      await this.persist();
      return true;
    } catch (e) {
      const msg = `metadata-server: could not write ${this.dataFile}: ${e instanceof Error ? e.message : String(e)}`;
      this.log.error(msg);
      this.reply(res, 500, `the change is in memory but could not be persisted: ${e instanceof Error ? e.message : String(e)}`, JSON_TEXT, expectContinue);
      return false;
    }
  }

  /** Resolves once a snapshot at least as new as the current generation is on disk. */
  private async persist(): Promise<void> {
    const target = this.generation;
    for (let i = 0; this.persistedGeneration < target; i++) {
      if (!this.writing) {
        this.writing = this.writeSnapshot().finally(() => {
          this.writing = undefined;
        });
      }
      await this.writing;
      if (i > 1000) throw new Error('persistence did not converge'); // bounded; unreachable in practice
    }
  }

  private async writeSnapshot(): Promise<void> {
    const generation = this.generation;
    const file = this.dataFile!;
    const now = this.now();
    const entries: PersistedEntry[] = [];
    for (const [key, e] of this.store) {
      if (e.expiresAt <= now) continue;
      const text = e.value.toString('utf8');
      const utf8 = Buffer.from(text, 'utf8').equals(e.value);
      entries.push({ key, value: utf8 ? text : e.value.toString('base64'), encoding: utf8 ? 'utf8' : 'base64', updatedAt: e.updatedAt });
    }
    const doc: PersistedFile = { format: FILE_FORMAT, version: 1, savedAt: new Date().toISOString(), entries };
    const tmp = `${file}.tmp-${process.pid}-${++this.tmpCounter}-${randomBytes(4).toString('hex')}`;
    const handle = await fs.promises.open(tmp, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(doc) + '\n');
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await fs.promises.rename(tmp, file);
    } catch (e) {
      await fs.promises.rm(tmp, { force: true });
      throw e;
    }
    await fsyncDir(path.dirname(file));
    this.persistedGeneration = Math.max(this.persistedGeneration, generation);
  }

  private async load(): Promise<void> {
    const dir = this.options.dataDir!;
    const file = this.dataFile!;
    try {
      await fs.promises.mkdir(dir, { recursive: true });
    } catch (cause) {
      throw new MooncakeError('INVALID_CONFIG', `cannot create the metadata data directory ${dir}: ${(cause as Error).message}`, {
        cause,
        details: { dataDir: dir },
      });
    }
    // Temp files left by a crash mid-write are incomplete by definition.
    for (const name of await fs.promises.readdir(dir)) {
      if (name.startsWith(`${DATA_FILE}.tmp-`)) await fs.promises.rm(path.join(dir, name), { force: true });
    }
    let text: string;
    try {
      text = await fs.promises.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new MooncakeError('INVALID_CONFIG', `cannot read ${file}: ${(e as Error).message}`, { cause: e, details: { dataDir: dir } });
    }
    let doc: PersistedFile;
    try {
      doc = JSON.parse(text) as PersistedFile;
      if (doc === null || typeof doc !== 'object' || doc.format !== FILE_FORMAT || !Array.isArray(doc.entries)) {
        throw new Error(`not a ${FILE_FORMAT} file`);
      }
      if (doc.version !== 1) throw new Error(`unsupported version ${String(doc.version)}`);
    } catch (e) {
      const aside = `${file}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
      await fs.promises.rename(file, aside).catch(() => undefined);
      this.log.error(
        `metadata-server: ${file} is unreadable (${(e as Error).message}); moved it to ${aside} and started with an empty store. ` +
          'Peers re-publish their keys when they restart.',
      );
      return;
    }
    const wallNow = Date.now();
    const monoNow = this.now();
    let loaded = 0;
    let expired = 0;
    let skipped = 0;
    for (const e of doc.entries) {
      if (
        e === null ||
        typeof e !== 'object' ||
        typeof e.key !== 'string' ||
        typeof e.value !== 'string' ||
        (e.encoding !== 'utf8' && e.encoding !== 'base64') ||
        typeof e.updatedAt !== 'number'
      ) {
        skipped++;
        continue;
      }
      let expiresAt = Infinity;
      if (this.options.ttlMs > 0) {
        const age = Math.max(0, wallNow - e.updatedAt); // a clock that went back counts as fresh
        if (age >= this.options.ttlMs) {
          expired++;
          continue;
        }
        expiresAt = monoNow + this.options.ttlMs - age;
      }
      this.store.set(e.key, { value: Buffer.from(e.value, e.encoding), expiresAt, updatedAt: e.updatedAt });
      loaded++;
    }
    if (skipped > 0) this.log.warn(`metadata-server: skipped ${skipped} malformed entries in ${file}`);
    this.log.info(`metadata-server: loaded ${loaded} entries from ${file}${expired > 0 ? ` (${expired} expired)` : ''}`);
    this.persistedGeneration = this.generation;
  }
}

interface PersistedEntry {
  key: string;
  value: string;
  encoding: 'utf8' | 'base64';
  /** Wall-clock ms of the last PUT. */
  updatedAt: number;
}

interface PersistedFile {
  format: string;
  version: number;
  savedAt: string;
  entries: PersistedEntry[];
}

/**
 * Reads a request body up to `limit` bytes. Resolves undefined when the body is larger; the rest is
 * then discarded as it arrives, and the socket is destroyed after 64 MiB of excess or 10 s.
 */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (over) {
        if (size > limit + 64 * 1024 * 1024) req.socket.destroy();
        return;
      }
      if (size > limit) {
        over = true;
        chunks.length = 0;
        setTimeout(() => {
          if (!req.complete) req.socket.destroy();
        }, 10_000).unref();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!over) resolve(Buffer.concat(chunks));
    });
    req.on('error', (e) => reject(new ClientGone(e.message)));
    req.on('aborted', () => reject(new ClientGone('request aborted by the client')));
  });
}

/** The client went away while we were reading its request; nothing to answer, nothing to log. */
class ClientGone extends Error {}

function decodePath(p: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    return p;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  try {
    const h = await fs.promises.open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  } catch {
    // Not every filesystem lets a directory be fsync'ed; the rename is still atomic.
  }
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0) throw new MooncakeError('INVALID_CONFIG', `${name} must be a positive integer, got ${String(value)}`);
  return value;
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new MooncakeError('INVALID_CONFIG', `${name} must be a non-negative number, got ${String(value)}`);
  return value;
}
