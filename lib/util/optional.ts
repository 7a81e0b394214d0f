/**
 * Optional dependencies: packages that only one mode needs (a metadata backend's client, the ZMQ and
 * msgpack libraries of the vLLM-compatible KV modes) are loaded on first use, so installing
 * mooncake-node never pulls them in. A missing one is a MISSING_DEPENDENCY error that names the package
 * to install and the feature that needs it.
 */
import { MooncakeError } from '../errors';

/** Loads `pkg` for `feature`, or throws MISSING_DEPENDENCY saying what to install. */
export function requireOptional<T>(pkg: string, feature: string): T {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(pkg) as T;
  } catch (cause) {
    const err = cause as NodeJS.ErrnoException;
    // Only the package itself missing is "not installed"; a broken install (or a missing dependency of
    // the package) keeps its own error.
    if (err.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes(`'${pkg}'`)) throw cause;
    throw new MooncakeError('MISSING_DEPENDENCY', `${feature} needs the optional package '${pkg}': npm install ${pkg}`, {
      cause,
      details: { package: pkg, feature },
    });
  }
}
