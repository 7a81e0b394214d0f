import { isMooncakeError, type MooncakeError } from '../../lib/errors';

/**
 * The MooncakeError `p` rejects with and how long that took. A fulfilment fails the test, and so does
 * a rejection with anything but a MooncakeError (rethrown as is).
 */
export async function timedRejection(p: Promise<unknown>): Promise<{ error: MooncakeError; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (e) {
    if (isMooncakeError(e)) return { error: e, ms: Date.now() - t0 };
    throw e;
  }
  throw new Error('expected a rejection');
}
