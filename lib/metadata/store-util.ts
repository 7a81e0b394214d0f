/** What every metadata backend shares: the store interface and small helpers. */
import { MooncakeError } from '../errors';
import { requireOptional } from '../util/optional';

export interface SetOptions {
  signal?: AbortSignal;
  /**
   * Liveness (opt-in): the entry disappears about `ttlMs` after its writer stops keeping it alive.
   * etcd attaches it to a lease of this store that the client keeps alive (whole seconds, rounded up);
   * redis writes `SET … PX ttlMs`; the HTTP client ignores it (the server's `--ttl-ms` decides).
   * Without it the entry is a plain, upstream-compatible key that never expires.
   */
  ttlMs?: number;
}

/**
 * How entries written with `ttlMs` stay alive:
 * - `'client'`: the store renews them itself while it is open (etcd leases); if the lease is lost the
 *   entries vanish and must be written again (a later `set` with `ttlMs` uses a new lease);
 * - `'rewrite'`: the writer must `set` them again well within `ttlMs` (redis expiry, HTTP server TTL).
 */
export type MetadataRenewal = 'client' | 'rewrite';

export interface MetadataStore {
  /** The connection string this store talks to. */
  readonly url: string;
  /** How entries written with `ttlMs` are kept alive; absent means `'rewrite'`. */
  readonly renewal?: MetadataRenewal;
  /** The stored value, or undefined when the key is missing (HTTP 404, etcd/redis: no such key). */
  get(key: string, options?: { signal?: AbortSignal }): Promise<string | undefined>;
  set(key: string, value: string, options?: SetOptions): Promise<void>;
  /** false when the key was missing. */
  remove(key: string): Promise<boolean>;
  close(): Promise<void>;
}

/** A positive number option, or the default when unset; INVALID_CONFIG otherwise. */
export function positiveOption(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) {
    throw new MooncakeError('INVALID_CONFIG', `${name} must be a positive number, got ${String(value)}`);
  }
  return value;
}

/** The ABORT_ERR of a metadata operation cancelled through its AbortSignal. */
export function metadataAbortError(operation: string, key: string, url: string, signal: AbortSignal, detail: 'op' | 'method' = 'op'): MooncakeError {
  return new MooncakeError('ABORT_ERR', `metadata ${operation} '${key}' was aborted`, {
    cause: signal.reason,
    details: { key, url, [detail]: operation },
  });
}

/** Loads a backend's client library on first use, or throws MISSING_DEPENDENCY naming the package. */
export function loadBackendModule<T>(pkg: string, backend: string): T {
  return requireOptional<T>(pkg, `the ${backend} metadata backend`);
}
