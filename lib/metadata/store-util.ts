/** Small pieces every metadata backend shares. */
import { MooncakeError } from '../errors';
import { requireOptional } from '../util/optional';

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
