/**
 * etcd v3 metadata backend, through the `etcd3` npm client (gRPC), loaded only when a store is created.
 *
 * What upstream Mooncake does (`EtcdStoragePlugin` in transfer_metadata_plugin.cpp and the Go wrapper
 * mooncake-common/etcd/etcd_wrapper.go), and this store does the same:
 * - the connection string after `etcd://` (or the whole string when it has no scheme) is a list of
 *   endpoints separated by `,` or `;`, blanks trimmed: `etcd://10.0.0.1:2379,10.0.0.2:2379`;
 * - plain `Put` / `Get` / `Delete` of the key; a missing key reads as absent; values are the JSON text;
 * - a 5 s deadline per operation (upstream's `context.WithTimeout(…, 5*time.Second)`).
 *
 * Differences: every failure is a `MooncakeError('METADATA')` naming the endpoints and the key (upstream
 * logs and returns false); entries written with `ttlMs` are attached to a lease kept alive by this
 * client (upstream's transfer engine never uses leases); upstream's jsoncpp `FastWriter` appends a
 * newline to the JSON it stores, this store writes the value it is given, byte for byte.
 */
import type { Etcd3, Lease } from 'etcd3';
import { loadBackendModule, metadataAbortError, positiveOption, type MetadataStore, type SetOptions } from './store-util';
import { MooncakeError } from '../errors';

export interface EtcdMetadataStoreOptions {
  /** Deadline of each operation (all retries included) in ms. Default 5000, as upstream. */
  timeoutMs?: number;
  /**
   * Deadline of one gRPC attempt in ms. Default half of `timeoutMs`, so an operation that picked a hung
   * member is retried on another one within its deadline.
   */
  attemptTimeoutMs?: number;
  /** The connection string to report as `url` (default `etcd://` + the endpoints). */
  connectionString?: string;
}

type Etcd3Module = typeof import('etcd3');
type Op = 'GET' | 'PUT' | 'DELETE' | 'LEASE';

const DEFAULT_TIMEOUT_MS = 5000;

export class EtcdMetadataStore implements MetadataStore {
  readonly url: string;
  readonly endpoints: readonly string[];
  readonly renewal = 'client' as const;
  private leaseCount = 0;
  private readonly lib: Etcd3Module;
  private readonly client: Etcd3;
  private readonly timeoutMs: number;
  private readonly leases = new Map<number, Lease>();
  private lastError: Error | undefined;
  private closed = false;

  /** @param endpoints `host:port` (or `http[s]://host:port`) strings, or one string separated by `,`/`;`. */
  constructor(endpoints: string | readonly string[], options: EtcdMetadataStoreOptions = {}) {
    const list = (typeof endpoints === 'string' ? [endpoints] : [...endpoints])
      .flatMap((e) => e.split(/[,;]/))
      .map((e) => e.trim())
      .filter((e) => e.length > 0);
    if (list.length === 0) {
      throw new MooncakeError('INVALID_CONFIG', 'the etcd connection string has no endpoints: use e.g. etcd://127.0.0.1:2379', {
        details: { endpoints },
      });
    }
    for (const e of list) {
      if (!/^(https?:\/\/)?(\[[0-9A-Fa-f:.%\w]+\]|[^\s/:[\]]+):\d{1,5}\/?$/.test(e)) {
        throw new MooncakeError('INVALID_CONFIG', `invalid etcd endpoint '${e}': expected host:port, e.g. 127.0.0.1:2379`, {
          details: { endpoint: e, endpoints: list },
        });
      }
    }
    this.timeoutMs = positiveOption(options.timeoutMs, DEFAULT_TIMEOUT_MS, 'timeoutMs');
    const attemptMs = positiveOption(options.attemptTimeoutMs, Math.max(1, Math.ceil(this.timeoutMs / 2)), 'attemptTimeoutMs');
    this.endpoints = list;
    this.url = options.connectionString ?? `etcd://${list.join(',')}`;
    this.lib = loadBackendModule<Etcd3Module>('etcd3', 'etcd');
    this.client = new this.lib.Etcd3({
      hosts: list.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`)),
      // Unary calls get a deadline per attempt; streams (lease keep-alive) must not have one.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + attemptMs }),
      grpcOptions: {
        // Reconnect soon after a member comes back; notice a dead connection within seconds. etcd's
        // default --grpc-keepalive-min-time is 5 s, so pinging every 10 s is allowed.
        'grpc.initial_reconnect_backoff_ms': 200,
        'grpc.max_reconnect_backoff_ms': 2000,
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 3000,
      },
    });
  }

  /** Leases granted so far (a lost lease is replaced by the next `set` with `ttlMs`). */
  get leasesGranted(): number {
    return this.leaseCount;
  }

  async get(key: string, options: { signal?: AbortSignal } = {}): Promise<string | undefined> {
    const value = await this.run('GET', key, options.signal, () => this.client.get(key).string());
    return value ?? undefined;
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<void> {
    const ttlMs = options.ttlMs;
    if (ttlMs === undefined || ttlMs <= 0) {
      await this.run('PUT', key, options.signal, () => this.client.put(key).value(value).exec());
      return;
    }
    const ttlSec = Math.max(1, Math.ceil(ttlMs / 1000));
    await this.run('PUT', key, options.signal, async () => {
      // A lease that expired while etcd was unreachable is reported lost; retry once with a new one.
      for (let attempt = 0; ; attempt++) {
        const lease = this.lease(ttlSec);
        try {
          await lease.put(key).value(value).exec();
          return;
        } catch (err) {
          if (attempt > 0 || !(err instanceof this.lib.EtcdLeaseInvalidError)) throw err;
          this.dropLease(ttlSec, lease);
        }
      }
    });
  }

  async remove(key: string): Promise<boolean> {
    const res = await this.run('DELETE', key, undefined, () => this.client.delete().key(key).exec());
    return Number(res.deleted) > 0;
  }

  /**
   * Revokes this store's leases (their keys disappear at once) within the deadline, then closes the
   * gRPC channels. Later calls fail with CLOSED. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const leases = [...this.leases.values()];
    this.leases.clear();
    await Promise.all(
      leases.map((l) => withDeadline(l.revoke(), this.timeoutMs).catch(() => l.release())),
    );
    this.client.close();
  }

  private lease(ttlSec: number): Lease {
    const existing = this.leases.get(ttlSec);
    if (existing && !existing.revoked()) return existing;
    const lease = this.client.lease(ttlSec);
    this.leaseCount++;
    lease.on('lost', (err: Error) => {
      this.lastError = err;
      this.dropLease(ttlSec, lease);
    });
    this.leases.set(ttlSec, lease);
    return lease;
  }

  private dropLease(ttlSec: number, lease: Lease): void {
    if (this.leases.get(ttlSec) === lease) this.leases.delete(ttlSec);
    lease.release();
  }

  private async run<T>(op: Op, key: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    if (this.closed) {
      throw new MooncakeError('CLOSED', `the metadata store for ${this.url} is closed`, { details: { key, url: this.url } });
    }
    if (signal?.aborted) throw metadataAbortError(op, key, this.url, signal);
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DeadlineError()), this.timeoutMs);
      if (signal) {
        onAbort = () => reject(metadataAbortError(op, key, this.url, signal));
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    const work = fn();
    work.catch(() => undefined); // settled later than the guard: nothing to report
    try {
      return await Promise.race([work, guard]);
    } catch (err) {
      if (err instanceof MooncakeError) throw err;
      throw this.error(op, key, err);
    } finally {
      clearTimeout(timer);
      if (onAbort) signal!.removeEventListener('abort', onAbort);
    }
  }

  private error(op: Op, key: string, err: unknown): MooncakeError {
    const e = err instanceof Error ? err : new Error(String(err));
    const name = e.constructor?.name ?? 'Error';
    const where = `etcd at ${this.endpoints.join(',')}`;
    const details: Record<string, unknown> = { backend: 'etcd', url: this.url, endpoints: [...this.endpoints], key, op, error: name };
    const noScheme = !this.url.includes('://');
    const schemeHint = noScheme
      ? ` ('${this.url}' has no scheme, which upstream treats as etcd; for an HTTP metadata server write http://${this.url}/metadata)`
      : '';
    let message: string;
    if (err instanceof DeadlineError || e instanceof this.lib.GRPCDeadlineExceededError) {
      details.timeoutMs = this.timeoutMs;
      message = `${where} did not answer ${op} '${key}' within ${this.timeoutMs} ms; check that the etcd members are up and have a leader${schemeHint}`;
    } else if (e instanceof this.lib.GRPCUnavailableError || name === 'BrokenCircuitError') {
      // The circuit breaker opens after repeated failures of a member; report what failed before it.
      const last = name === 'BrokenCircuitError' && this.lastError ? this.lastError.message : e.message;
      message = `cannot reach ${where} (${op} '${key}'): ${last}; is etcd running and are the endpoints right?${schemeHint}`;
    } else if (e instanceof this.lib.ClientClosedError) {
      return new MooncakeError('CLOSED', `the metadata store for ${this.url} is closed`, { cause: e, details });
    } else {
      message = `${where} failed ${op} '${key}': ${e.message}${schemeHint}`;
    }
    if (name !== 'BrokenCircuitError') this.lastError = e;
    return new MooncakeError('METADATA', message, { cause: e, details });
  }
}

/** Our own deadline (the gRPC attempts have theirs); mapped to a METADATA error by `run`. */
class DeadlineError extends Error {}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError()), ms);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

