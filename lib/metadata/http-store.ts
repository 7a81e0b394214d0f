/**
 * HTTP metadata client speaking upstream Mooncake's protocol (`HTTPStoragePlugin` in
 * mooncake-transfer-engine/src/transfer_metadata_plugin.cpp):
 *
 * - URL = `<connection string>?key=<curl_easy_escape(key)>`; the whole connection string is the base URL.
 * - GET succeeds only on 200 (404 = missing); PUT sends `Content-Type: application/json`; DELETE.
 * - 3000 ms total and 1500 ms connect timeouts by default.
 *
 * Unlike libcurl, node:http never reads `http_proxy`/`https_proxy`, so the client reaches a loopback
 * metadata server even when a proxy is configured in the environment.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { metadataAbortError, positiveOption, type MetadataStore, type SetOptions } from './store-util';
import { MooncakeError } from '../errors';
import { escapeKeyForUrl } from './keys';

export interface HttpMetadataStoreOptions {
  /** Whole-request deadline in ms (connect, send, wait, read). Default 3000, as upstream's libcurl. */
  timeoutMs?: number;
  /** Deadline for DNS lookup plus TCP connect in ms. Default 1500, as upstream's libcurl. */
  connectTimeoutMs?: number;
  /** Largest response body accepted in bytes. Default 64 MiB. */
  maxResponseBytes?: number;
  /** Maximum concurrent sockets to the server. Default 16. */
  maxSockets?: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

interface Reply {
  status: number;
  body: Buffer;
  contentType: string | undefined;
}

type Method = 'GET' | 'PUT' | 'DELETE';

const DEFAULTS = {
  timeoutMs: 3000,
  connectTimeoutMs: 1500,
  maxResponseBytes: 64 * 1024 * 1024,
  maxSockets: 16,
};

/** The body aiohttp (upstream's server) and our MetadataServer send for a path that has no route. */
const ROUTE_MISS_BODY = '404: Not Found';

export class HttpMetadataStore implements MetadataStore {
  readonly url: string;
  /** Entries live as long as the server keeps them (`--ttl-ms`): the writer re-PUTs them to renew. */
  readonly renewal = 'rewrite' as const;
  private readonly target: URL;
  private readonly transport: typeof http | typeof https;
  private readonly agent: http.Agent;
  private readonly opts: Required<HttpMetadataStoreOptions>;
  private closed = false;

  /** @param url the connection string, e.g. `http://127.0.0.1:8080/metadata` (used verbatim as base URL). */
  constructor(url: string, options: HttpMetadataStoreOptions = {}) {
    let target: URL;
    try {
      target = new URL(url);
    } catch (cause) {
      throw new MooncakeError('INVALID_CONFIG', `invalid metadata server URL '${url}': expected e.g. http://127.0.0.1:8080/metadata`, {
        cause,
        details: { url },
      });
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      throw new MooncakeError('INVALID_CONFIG', `metadata server URL '${url}' must start with http:// or https://`, { details: { url } });
    }
    this.opts = {
      timeoutMs: positiveOption(options.timeoutMs, DEFAULTS.timeoutMs, 'timeoutMs'),
      connectTimeoutMs: positiveOption(options.connectTimeoutMs, DEFAULTS.connectTimeoutMs, 'connectTimeoutMs'),
      maxResponseBytes: positiveOption(options.maxResponseBytes, DEFAULTS.maxResponseBytes, 'maxResponseBytes'),
      maxSockets: positiveOption(options.maxSockets, DEFAULTS.maxSockets, 'maxSockets'),
    };
    this.url = url;
    this.target = target;
    this.transport = target.protocol === 'https:' ? https : http;
    const agentOptions = { keepAlive: true, maxSockets: this.opts.maxSockets, maxFreeSockets: this.opts.maxSockets };
    this.agent = target.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  /** The value stored under `key`, or undefined when the server answers 404. */
  async get(key: string, options: RequestOptions = {}): Promise<string | undefined> {
    const reply = await this.request('GET', key, undefined, options.signal);
    if (reply.status === 200) return reply.body.toString('utf8');
    if (reply.status === 404 && reply.body.toString('utf8') !== ROUTE_MISS_BODY) return undefined;
    throw this.statusError('GET', key, reply);
  }

  /**
   * Stores `value` under `key`; resolves only when the server answered 200. `ttlMs` is ignored: the
   * server's TTL (`MetadataServer` `ttlMs`, `--ttl-ms`) decides how long an entry lives without a re-PUT.
   */
  async set(key: string, value: string, options: SetOptions = {}): Promise<void> {
    const reply = await this.request('PUT', key, Buffer.from(value, 'utf8'), options.signal);
    if (reply.status === 200) return;
    throw this.statusError('PUT', key, reply);
  }

  /** Deletes `key`; true when it existed (200), false when the server answered 404. */
  async remove(key: string, options: RequestOptions = {}): Promise<boolean> {
    const reply = await this.request('DELETE', key, undefined, options.signal);
    if (reply.status === 200) return true;
    if (reply.status === 404 && reply.body.toString('utf8') !== ROUTE_MISS_BODY) return false;
    throw this.statusError('DELETE', key, reply);
  }

  /** Closes pooled keep-alive sockets; later calls fail with code CLOSED. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.agent.destroy();
  }

  /** The exact URL requested for `key`. */
  requestUrl(key: string): string {
    return `${this.url}?key=${escapeKeyForUrl(key)}`;
  }

  private async request(method: Method, key: string, body: Buffer | undefined, signal: AbortSignal | undefined): Promise<Reply> {
    if (this.closed) {
      throw new MooncakeError('CLOSED', `the metadata store for ${this.url} is closed`, { details: { key, url: this.url } });
    }
    const deadline = Date.now() + this.opts.timeoutMs;
    // A pooled keep-alive socket may have been closed by the server just as we reuse it; retry such a
    // request once on a fresh socket (the request never reached the server), within the same deadline.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.attempt(method, key, body, signal, deadline);
      } catch (e) {
        if (attempt === 0 && e instanceof StaleSocketError && Date.now() < deadline) continue;
        throw e instanceof StaleSocketError ? e.error : e;
      }
    }
  }

  private attempt(method: Method, key: string, body: Buffer | undefined, signal: AbortSignal | undefined, deadline: number): Promise<Reply> {
    const url = this.requestUrl(key);
    const details = { key, url, method };
    if (signal?.aborted) return Promise.reject(metadataAbortError(method, key, url, signal, 'method'));
    return new Promise<Reply>((resolve, reject) => {
      let settled = false;
      let gotResponse = false;
      let connectTimer: NodeJS.Timeout | undefined;
      let req: http.ClientRequest;
      const totalTimer = setTimeout(() => {
        fail(
          new MooncakeError(
            'METADATA',
            `the metadata server at ${this.url} did not answer ${method} '${key}' within ${this.opts.timeoutMs} ms; ` +
              'check that the server is healthy and reachable',
            { details: { ...details, timeoutMs: this.opts.timeoutMs } },
          ),
        );
      }, Math.max(1, deadline - Date.now()));
      const onAbort = (): void => fail(metadataAbortError(method, key, url, signal!, 'method'));
      signal?.addEventListener('abort', onAbort, { once: true });

      const cleanup = (): void => {
        clearTimeout(totalTimer);
        if (connectTimer) clearTimeout(connectTimer);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (error: Error): void => {
        if (settled) return;
        settled = true;
        cleanup();
        reject(error);
        req?.destroy();
      };
      const succeed = (reply: Reply): void => {
        if (settled) return;
        settled = true;
        cleanup();
        resolve(reply);
      };

      const headers: http.OutgoingHttpHeaders = { Accept: '*/*' };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        headers['Content-Length'] = body.length;
      }
      const t = this.target;
      try {
        req = this.transport.request({
          method,
          protocol: t.protocol,
          hostname: t.hostname.startsWith('[') ? t.hostname.slice(1, -1) : t.hostname,
          port: t.port === '' ? undefined : Number(t.port),
          path: `${t.pathname}${t.search}?key=${escapeKeyForUrl(key)}`,
          auth: t.username || t.password ? `${decodeURIComponent(t.username)}:${decodeURIComponent(t.password)}` : undefined,
          headers,
          agent: this.agent,
        });
      } catch (cause) {
        fail(new MooncakeError('METADATA', `cannot send ${method} '${key}' to the metadata server at ${this.url}: ${String(cause)}`, { cause, details }));
        return;
      }

      req.on('socket', (socket) => {
        if (!socket.connecting) return; // a pooled socket that is already connected
        connectTimer = setTimeout(() => {
          fail(
            new MooncakeError(
              'METADATA',
              `could not connect to the metadata server at ${this.url} within ${this.opts.connectTimeoutMs} ms (${method} '${key}'); ` +
                'check the host and port, and that no firewall drops the connection',
              { details: { ...details, connectTimeoutMs: this.opts.connectTimeoutMs } },
            ),
          );
        }, this.opts.connectTimeoutMs);
        socket.once('connect', () => {
          if (connectTimer) clearTimeout(connectTimer);
          connectTimer = undefined;
        });
      });

      req.on('error', (err: NodeJS.ErrnoException) => {
        if (settled) return;
        const error = this.socketError(method, key, url, err);
        if (req.reusedSocket && !gotResponse && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          settled = true;
          cleanup();
          reject(new StaleSocketError(error));
          return;
        }
        fail(error);
      });

      req.on('response', (res) => {
        gotResponse = true;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > this.opts.maxResponseBytes) {
            fail(
              new MooncakeError(
                'METADATA',
                `the metadata server at ${this.url} sent more than ${this.opts.maxResponseBytes} bytes for ${method} '${key}'`,
                { details: { ...details, status: res.statusCode } },
              ),
            );
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          succeed({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), contentType: res.headers['content-type'] });
        });
        res.on('aborted', () => fail(this.socketError(method, key, url, Object.assign(new Error('response aborted'), { code: 'ECONNRESET' }))));
        res.on('error', (err: NodeJS.ErrnoException) => fail(this.socketError(method, key, url, err)));
      });

      req.end(body);
    });
  }

  private socketError(method: Method, key: string, url: string, err: NodeJS.ErrnoException): MooncakeError {
    const details = { key, url, method, errno: err.code };
    const where = `the metadata server at ${this.url}`;
    let message: string;
    switch (err.code) {
      case 'ECONNREFUSED':
        message =
          `${where} refused the connection (${method} '${key}'): is the metadata server running? ` +
          'Start one with `mooncake-node metadata-server --port <port>` or fix the connection string';
        break;
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        message = `cannot resolve the host of ${where} (${err.code}, ${method} '${key}'); check the connection string`;
        break;
      case 'EHOSTUNREACH':
      case 'ENETUNREACH':
        message = `${where} is unreachable (${err.code}, ${method} '${key}'); check the address and the network`;
        break;
      default:
        message = `lost the connection to ${where} during ${method} '${key}' (${err.code ?? err.message})`;
    }
    return new MooncakeError('METADATA', message, { cause: err, details });
  }

  private statusError(method: Method, key: string, reply: Reply): MooncakeError {
    const text = reply.body.toString('utf8');
    const snippet = text.length > 200 ? `${text.slice(0, 200)}…` : text;
    let hint = '';
    if (reply.status === 400 && text.includes('Duplicate rpc_meta')) {
      hint =
        '; another peer already published this rpc_meta key (a stale entry left by a crashed process, or two ' +
        'processes using the same name): use a unique name or DELETE the stale key';
    } else if ((reply.status === 404 && text === ROUTE_MISS_BODY) || reply.status === 405) {
      hint = `; the connection string must be the metadata route itself, e.g. http://host:8080/metadata`;
    } else if (reply.status === 413 || reply.status === 414) {
      hint = '; the key or value exceeds the server limits';
    } else if (reply.status >= 500) {
      hint = '; the metadata server failed, see its log';
    }
    return new MooncakeError(
      'METADATA',
      `the metadata server at ${this.url} answered ${method} '${key}' with HTTP ${reply.status}${snippet ? `: ${snippet}` : ''}${hint}`,
      { details: { key, url: this.requestUrl(key), method, status: reply.status, body: snippet } },
    );
  }
}

/** Marks a failure on a reused keep-alive socket, which is safe to retry once. */
class StaleSocketError extends Error {
  constructor(readonly error: MooncakeError) {
    super(error.message);
  }
}

