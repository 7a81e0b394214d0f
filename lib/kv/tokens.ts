/**
 * Request tokens: what binds a completion signal to the kv_transfer_params it is about.
 *
 * The rank that makes a request's params (the producer's `hold`, pull; the consumer's `expect`, push) puts
 * a token in them (`remote_token`), and every signal about that request from the other side echoes it
 * (`token` in "done", "push_start", "push_done"). A signal without the right token is refused: only a
 * rank that was given the params can release a hold or complete an expectation.
 *
 * Tokens are derived, not stored: the first 128 bits of HMAC-SHA256(key, engine id, dp rank, request id),
 * base64url. Every tp rank of an instance therefore computes the same token for a request without talking
 * to the others (the proxy hands the params of one rank to the other side, and they must hold for all),
 * and a signal can be checked on arrival even before `hold`/`expect` was called for its request.
 *
 * The key (`holdKey`, else `$MC_KV_HOLD_KEY`, else a random key made once per process) must be the same on
 * every rank of an instance: ranks of one instance in separate processes need `holdKey` or the variable.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { MooncakeError, describeValue } from '../errors';

/** kv_transfer_params key of the token (a mooncake-node addition). */
export const TOKEN_PARAM = 'remote_token';

/** Length of a token (22 base64url characters: 128 bits). */
export const TOKEN_LENGTH = 22;

let processKey: Buffer | undefined;

/** The key for `holdKey`: the option, else $MC_KV_HOLD_KEY, else this process's random key. */
export function resolveHoldKey(option: unknown): Buffer {
  const v = option ?? process.env.MC_KV_HOLD_KEY;
  if (v === undefined || v === '') {
    processKey ??= randomBytes(32);
    return processKey;
  }
  const key = typeof v === 'string' ? Buffer.from(v, 'utf8') : v instanceof Uint8Array ? Buffer.from(v) : undefined;
  if (key === undefined || key.length < 16) {
    const field = option === undefined ? 'MC_KV_HOLD_KEY' : 'holdKey';
    const got = typeof v === 'string' || v instanceof Uint8Array ? `${v.length} ${typeof v === 'string' ? 'characters' : 'bytes'}` : describeValue(v);
    throw new MooncakeError('INVALID_CONFIG', `${field} must be a string or bytes of at least 16 bytes, the same on every rank of an instance; got ${got}`, {
      details: { field },
    });
  }
  return key;
}

export class RequestTokens {
  constructor(private readonly key: Buffer, private readonly engineId: string, private readonly dpRank: number) {}

  /** The token of `requestId` (the same on every tp rank of the instance). */
  token(requestId: string): string {
    return createHmac('sha256', this.key).update(`${this.engineId}\0${this.dpRank}\0${requestId}`).digest().subarray(0, 16).toString('base64url');
  }

  /** True when `token` is the token of `requestId` (compared in constant time). */
  verify(requestId: string, token: unknown): boolean {
    if (typeof token !== 'string' || token.length !== TOKEN_LENGTH) return false;
    return timingSafeEqual(Buffer.from(token), Buffer.from(this.token(requestId)));
  }
}
