/**
 * Redis metadata backend, through node-redis (`redis` on npm), loaded only when a store is created.
 *
 * What upstream Mooncake does (`RedisStoragePlugin` in transfer_metadata_plugin.cpp, hiredis), and this
 * store does the same:
 * - the connection string after `redis://` is `host:port` (`[v6]:port` for IPv6);
 * - `MC_REDIS_PASSWORD` (non-empty) → `AUTH [MC_REDIS_USERNAME] password`; `MC_REDIS_DB_INDEX` (0–255,
 *   anything else is warned about and 0 is used) → `SELECT n` when not 0;
 * - `GET key` (nil = missing), `SET key value`, `DEL key`; values are the JSON text.
 *
 * Differences: a missing port means 6379 (upstream falls back to its handshake port 12001, which is
 * never a redis server); every operation has a deadline (hiredis has none, so upstream can block
 * forever on a hung server) and every failure is a `MooncakeError('METADATA')`; the connection is
 * re-established in the background after a failure; entries written with `ttlMs` use `SET … PX`;
 * upstream's jsoncpp `FastWriter` appends a newline to the JSON it stores, this store writes the value
 * it is given, byte for byte.
 */
import type { RedisClientType } from 'redis';
import { loadBackendModule, metadataAbortError, positiveOption, type MetadataStore, type SetOptions } from './store-util';
import { MooncakeError } from '../errors';

export const REDIS_USERNAME_ENV = 'MC_REDIS_USERNAME';
export const REDIS_PASSWORD_ENV = 'MC_REDIS_PASSWORD';
export const REDIS_DB_INDEX_ENV = 'MC_REDIS_DB_INDEX';

export interface RedisMetadataStoreOptions {
  /** Deadline of each operation (connecting included) in ms. Default 3000. */
  timeoutMs?: number;
  /** Deadline of one TCP connect in ms. Default 1500 (at most `timeoutMs`). */
  connectTimeoutMs?: number;
  /** ACL user. Default `$MC_REDIS_USERNAME`; used only with a password, as upstream. */
  username?: string;
  /** Password. Default `$MC_REDIS_PASSWORD`; empty means no AUTH. */
  password?: string;
  /** Database index 0–255. Default `$MC_REDIS_DB_INDEX`, else 0. */
  database?: number;
  /** Where a bad `MC_REDIS_DB_INDEX` is reported. Default console.warn. */
  warn?: (message: string) => void;
}

type RedisModule = typeof import('redis');
type Op = 'GET' | 'SET' | 'DEL';

const DEFAULTS = { timeoutMs: 3000, connectTimeoutMs: 1500, port: 6379 };

export class RedisMetadataStore implements MetadataStore {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly database: number;
  readonly renewal = 'rewrite' as const;
  private readonly lib: RedisModule;
  private readonly timeoutMs: number;
  private readonly authenticated: boolean;
  private readonly makeClient: () => RedisClientType;
  /** The current connection; dropped (and made again by the next operation) when it stops answering. */
  private conn: { client: RedisClientType; connecting?: Promise<void> } | undefined;
  private lastError: Error | undefined;
  private closed = false;

  /** @param address `host:port` (the part of `redis://host:port` after the scheme). */
  constructor(address: string, options: RedisMetadataStoreOptions = {}) {
    const { host, port } = parseAddress(address);
    this.host = host;
    this.port = port;
    this.url = `redis://${address}`;
    this.timeoutMs = positiveOption(options.timeoutMs, DEFAULTS.timeoutMs, 'timeoutMs');
    const connectTimeoutMs = Math.min(positiveOption(options.connectTimeoutMs, DEFAULTS.connectTimeoutMs, 'connectTimeoutMs'), this.timeoutMs);
    const password = options.password ?? process.env[REDIS_PASSWORD_ENV] ?? '';
    const username = options.username ?? process.env[REDIS_USERNAME_ENV] ?? '';
    this.database = options.database ?? databaseFromEnv(options.warn ?? ((m) => console.warn(m)));
    if (!Number.isInteger(this.database) || this.database < 0 || this.database > 255) {
      throw new MooncakeError('INVALID_CONFIG', `the redis database index must be an integer in [0, 255], got ${String(this.database)}`);
    }
    this.authenticated = password.length > 0;
    const lib = (this.lib = loadBackendModule<RedisModule>('redis', 'redis'));
    this.makeClient = () => {
      const client = lib.createClient({
        socket: {
          host,
          port,
          connectTimeout: connectTimeoutMs,
          // Keep reconnecting in the background (capped at 1 s apart) so the store recovers when the
          // server comes back; stop when the server itself refused us (bad password, bad database):
          // retrying cannot fix that, and the next operation reports it.
          reconnectStrategy: (retries: number, cause: Error) =>
            cause instanceof lib.ErrorReply ? cause : Math.min(50 * 2 ** Math.min(retries, 5), 1000),
        },
        // Upstream: no AUTH without a password; the username only goes with one.
        ...(password.length > 0 ? { password, ...(username.length > 0 ? { username } : {}) } : {}),
        ...(this.database !== 0 ? { database: this.database } : {}),
        // Fail at once while disconnected instead of queueing commands without a bound.
        disableOfflineQueue: true,
      }) as unknown as RedisClientType;
      // node-redis reports connection trouble as 'error' events; without a listener they would crash
      // the process. Operations report failures themselves.
      client.on('error', (err: Error) => {
        this.lastError = err;
      });
      return client;
    };
  }

  async get(key: string, options: { signal?: AbortSignal } = {}): Promise<string | undefined> {
    const reply = await this.command('GET', key, ['GET', key], options.signal);
    if (reply === null || reply === undefined) return undefined;
    return Buffer.isBuffer(reply) ? reply.toString('utf8') : String(reply);
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<void> {
    const ttl = options.ttlMs !== undefined && options.ttlMs > 0 ? ['PX', String(Math.ceil(options.ttlMs))] : [];
    await this.command('SET', key, ['SET', key, value, ...ttl], options.signal);
  }

  async remove(key: string): Promise<boolean> {
    return Number(await this.command('DEL', key, ['DEL', key], undefined)) > 0;
  }

  /** Drops the connection (and any reconnection in progress). Later calls fail with CLOSED. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.conn) this.drop(this.conn.client);
  }

  private async command(op: Op, key: string, args: string[], signal: AbortSignal | undefined): Promise<unknown> {
    if (this.closed) {
      throw new MooncakeError('CLOSED', `the metadata store for ${this.url} is closed`, { details: { key, url: this.url } });
    }
    if (signal?.aborted) throw metadataAbortError(op, key, this.url, signal);
    const deadline = Date.now() + this.timeoutMs;
    if (!this.conn) this.conn = { client: this.makeClient() };
    const conn = this.conn;
    try {
      await this.ready(conn, deadline, signal, op, key);
      // node-redis's own command timeout stops counting once the command is written, so the deadline
      // (and the abort signal) are enforced here.
      return await this.bounded(conn.client.sendCommand(args), deadline, signal, op, key);
    } catch (err) {
      // No answer in time: this connection is unusable (a hung server, a black-holed network). Drop it;
      // its unanswered commands fail, and the next operation connects again.
      if (err instanceof DeadlineError) this.drop(conn.client);
      if (err instanceof MooncakeError) throw err;
      throw this.error(op, key, err);
    }
  }

  private drop(client: RedisClientType): void {
    if (this.conn?.client === client) this.conn = undefined;
    if (client.isOpen) client.destroy();
  }

  /** `p`, or a DeadlineError at `deadline`, or ABORT_ERR when `signal` fires. */
  private bounded<T>(p: Promise<T>, deadline: number, signal: AbortSignal | undefined, op: Op, key: string): Promise<T> {
    p.catch(() => undefined); // it may settle after we gave up on it
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => finish(() => reject(metadataAbortError(op, key, this.url, signal!)));
      const timer = setTimeout(() => finish(() => reject(new DeadlineError(this.lastError))), Math.max(1, deadline - Date.now()));
      const finish = (fn: () => void): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => finish(() => resolve(v)),
        (e: unknown) => finish(() => reject(e)),
      );
    });
  }

  /** Resolves once the client is connected (and authenticated); rejects on the first failure or at the deadline. */
  private ready(conn: { client: RedisClientType; connecting?: Promise<void> }, deadline: number, signal: AbortSignal | undefined, op: Op, key: string): Promise<void> {
    const client = conn.client;
    if (client.isReady) return Promise.resolve();
    if (!client.isOpen) {
      this.lastError = undefined;
      conn.connecting = client.connect().then(
        () => undefined,
        (err: Error) => {
          this.lastError = err;
          throw err;
        },
      );
      conn.connecting.catch(() => undefined);
    }
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (fn: () => void): void => {
        clearTimeout(timer);
        client.off('ready', onReady);
        client.off('error', onError);
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onReady = (): void => finish(resolve);
      // The first failed attempt is the answer (the client keeps retrying in the background).
      const onError = (err: Error): void => finish(() => reject(err));
      const onAbort = (): void => finish(() => reject(metadataAbortError(op, key, this.url, signal!)));
      timer = setTimeout(() => finish(() => reject(new DeadlineError(this.lastError))), Math.max(1, deadline - Date.now()));
      client.on('ready', onReady);
      client.on('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
      conn.connecting?.catch((err: Error) => finish(() => reject(err)));
    });
  }

  private error(op: Op, key: string, err: unknown): MooncakeError {
    const lib = this.lib;
    let e = err instanceof Error ? err : new Error(String(err));
    // The reconnect strategy wraps the server's refusal; report the refusal itself.
    if (e instanceof lib.ReconnectStrategyError && e.originalError instanceof Error) e = e.originalError;
    const where = `redis at ${this.host}:${this.port}`;
    const errno = (e as NodeJS.ErrnoException).code;
    const details: Record<string, unknown> = { backend: 'redis', url: this.url, key, op, error: e.constructor?.name ?? 'Error' };
    if (errno) details.errno = errno;
    let message: string;
    if (e instanceof DeadlineError || e instanceof lib.TimeoutError) {
      details.timeoutMs = this.timeoutMs;
      const last = e instanceof DeadlineError && e.last ? ` (last error: ${e.last.message})` : '';
      message = `${where} did not answer ${op} '${key}' within ${this.timeoutMs} ms${last}; check that redis-server is healthy and reachable`;
    } else if (e instanceof lib.ErrorReply && /^(WRONGPASS|NOAUTH|NOPERM)/.test(e.message)) {
      message =
        `${where} refused the credentials (${op} '${key}'): ${e.message}; check ${REDIS_USERNAME_ENV} / ${REDIS_PASSWORD_ENV}` +
        (this.authenticated ? '' : ` (no password is set: the server requires ${REDIS_PASSWORD_ENV})`);
    } else if (e instanceof lib.ErrorReply && /DB index|invalid DB/i.test(e.message)) {
      details.database = this.database;
      message = `${where} cannot select database ${this.database} (${op} '${key}'): ${e.message}; check ${REDIS_DB_INDEX_ENV}`;
    } else if (e instanceof lib.ErrorReply) {
      message = `${where} rejected ${op} '${key}': ${e.message}`;
    } else if (errno === 'ECONNREFUSED') {
      message = `${where} refused the connection (${op} '${key}'): is redis-server running? Check the connection string redis://host:port`;
    } else if (errno === 'ENOTFOUND' || errno === 'EAI_AGAIN') {
      message = `cannot resolve the host of ${where} (${errno}, ${op} '${key}'); check the connection string`;
    } else if (e instanceof lib.ClientOfflineError) {
      const last = this.lastError ? `: ${this.lastError.message}` : '';
      message = `lost the connection to ${where} (${op} '${key}'${last}); reconnecting in the background`;
    } else if (e instanceof lib.ConnectionTimeoutError) {
      message = `could not connect to ${where} in time (${op} '${key}'); check the host, the port and firewalls`;
    } else if (e instanceof lib.ClientClosedError) {
      return new MooncakeError('CLOSED', `the metadata store for ${this.url} is closed`, { cause: e, details });
    } else {
      message = `${where} failed ${op} '${key}': ${e.message}`;
    }
    return new MooncakeError('METADATA', message, { cause: e, details });
  }
}

/** Our own deadline, with the last connection error seen while waiting. */
class DeadlineError extends Error {
  constructor(readonly last: Error | undefined) {
    super('deadline exceeded');
  }
}

/** `host:port`, `[v6]:port`, or a host alone (port 6379). */
export function parseAddress(address: string): { host: string; port: number } {
  const bad = (why: string): MooncakeError =>
    new MooncakeError('INVALID_CONFIG', `invalid redis address '${address}' (${why}): use redis://host:6379; credentials go in ${REDIS_USERNAME_ENV} / ${REDIS_PASSWORD_ENV}, the database in ${REDIS_DB_INDEX_ENV}`, {
      details: { address },
    });
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d*))?$/.exec(address);
  if (v6) {
    host = v6[1];
    portText = v6[2];
  } else {
    if (address.includes('/') || address.includes('@')) throw bad('only host:port is allowed');
    const colon = address.lastIndexOf(':');
    host = colon < 0 ? address : address.slice(0, colon);
    portText = colon < 0 ? undefined : address.slice(colon + 1);
    if (host.includes(':')) throw bad('write IPv6 addresses in brackets, e.g. [::1]:6379');
  }
  if (host.length === 0) throw bad('no host');
  if (portText === undefined || portText === '') return { host, port: DEFAULTS.port };
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw bad(`bad port '${portText}'`);
  return { host, port };
}

/**
 * `MC_REDIS_DB_INDEX` with upstream's rule (`std::stoi`: leading blanks and digits, the rest ignored):
 * an integer 0–255, else a warning and 0.
 */
function databaseFromEnv(warn: (message: string) => void): number {
  const text = process.env[REDIS_DB_INDEX_ENV];
  if (text === undefined) return 0;
  const m = /^\s*([+-]?\d+)/.exec(text);
  const n = m ? Number(m[1]) : NaN;
  if (Number.isInteger(n) && n >= 0 && n <= 255) return n;
  warn(`mooncake-node: ${REDIS_DB_INDEX_ENV}='${text}' is not an integer in [0, 255]; using database 0 (as upstream)`);
  return 0;
}

