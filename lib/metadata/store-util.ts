/** Small pieces every metadata backend shares. */
import { MooncakeError } from '../errors';

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

/** Loads a backend's client library on first use, or says which package to install. */
export function loadBackendModule<T>(pkg: string, backend: string): T {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(pkg) as T;
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw cause;
    throw new MooncakeError('INVALID_CONFIG', `the ${backend} metadata backend needs the '${pkg}' package: npm install ${pkg}`, { cause });
  }
}
