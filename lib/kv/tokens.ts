/**
 * Request tokens: what binds a completion signal to the kv_transfer_params it is about.
 *
 * The rank that makes a request's params (the producer's `hold`, pull; the consumer's `expect`, push) puts
 * a token in them (`remote_token`), and every signal about that request from the other side echoes it
 * (`token` in "done", "push_start", "push_done"). A signal without the right token is refused: only a
 * rank that was given the params can release a hold or complete an expectation.
 *
 * Tokens are derived, not stored: the first 128 bits of HMAC-SHA256(key, engine id, dp rank, request id),
 * base64url. A signal can therefore be checked on arrival, even before `hold`/`expect` was called for its
 * request. The proxy hands the params of ONE rank of an instance to the other side, and its signals must
 * hold for every rank of the instance, so each rank accepts tokens made under any key of its instance:
 *
 * - `holdKey` (or `$MC_KV_HOLD_KEY`) configured: one key, the same on every rank; nothing is published.
 * - Otherwise each process makes a random key, which all its ranks use, and every rank publishes it in its
 *   registry entry (`token_key`), so ranks of one instance in separate processes read each other's keys
 *   (instance-keys.ts). Tokens are then as secret as the metadata store.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { MooncakeError, describeValue } from '../errors';

/** kv_transfer_params key of the token (a mooncake-node addition). */
export const TOKEN_PARAM = 'remote_token';

/** Length of a token (22 base64url characters: 128 bits). */
export const TOKEN_LENGTH = 22;

let processKey: Buffer | undefined;

/** True when a key is configured (the option, else a non-empty $MC_KV_HOLD_KEY): no key is published. */
export function isHoldKeyConfigured(option: unknown): boolean {
  const v = option ?? process.env.MC_KV_HOLD_KEY;
  return v !== undefined && v !== '';
}

/** The key for `holdKey`: the option, else $MC_KV_HOLD_KEY, else this process's random key. */
export function resolveHoldKey(option: unknown): Buffer {
  const v = option ?? process.env.MC_KV_HOLD_KEY;
  if (!isHoldKeyConfigured(option)) {
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

/**
 * Ranks of this process that use its random key, by where they are registered (metadata store and registry
 * key): a rank knows the key of a rank of its instance that lives here without reading the store.
 */
const localRanks = new Map<string, number>();

/** Notes that the rank registered as `id` uses this process's key; returns what undoes it. */
export function noteLocalRank(id: string): () => void {
  localRanks.set(id, (localRanks.get(id) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (localRanks.get(id) ?? 1) - 1;
    if (n > 0) localRanks.set(id, n);
    else localRanks.delete(id);
  };
}

/** True when the rank registered as `id` lives in this process and uses its key. */
export function isLocalRank(id: string): boolean {
  return localRanks.has(id);
}

/**
 * What a signal's token is: made under a key of the instance ('ok'), not ('bad': it fails every key while
 * every rank's key is known), or not known yet ('unknown': it may come from a rank whose key was not read).
 */
export type TokenVerdict = 'ok' | 'bad' | 'unknown';

/** The keys of the other ranks of an instance (instance-keys.ts). */
export interface TokenKeyring {
  /** Keys to try besides the rank's own. */
  keys(): readonly Buffer[];
  /** True when the key of every rank of the instance is known. */
  complete(): boolean;
}

export class RequestTokens {
  private keyring: TokenKeyring | undefined;

  constructor(private readonly key: Buffer, private readonly engineId: string, private readonly dpRank: number) {}

  /** Also accepts tokens made under the keys of the other ranks of the instance. */
  accept(keyring: TokenKeyring): void {
    this.keyring = keyring;
  }

  private mac(key: Buffer, requestId: string): Buffer {
    return Buffer.from(createHmac('sha256', key).update(`${this.engineId}\0${this.dpRank}\0${requestId}`).digest().subarray(0, 16).toString('base64url'));
  }

  /** The token this rank puts in the params of `requestId` (the same on every rank that shares its key). */
  token(requestId: string): string {
    return this.mac(this.key, requestId).toString();
  }

  /** Whether `token` was made for `requestId` under a key of the instance (compared in constant time). */
  check(requestId: string, token: unknown): TokenVerdict {
    if (typeof token !== 'string' || token.length !== TOKEN_LENGTH) return 'bad';
    const got = Buffer.from(token);
    if (got.length !== TOKEN_LENGTH) return 'bad';
    if (timingSafeEqual(got, this.mac(this.key, requestId))) return 'ok';
    if (!this.keyring) return 'bad';
    for (const key of this.keyring.keys()) if (timingSafeEqual(got, this.mac(key, requestId))) return 'ok';
    return this.keyring.complete() ? 'bad' : 'unknown';
  }

  /** True when `token` is the token of `requestId` under a key of the instance. */
  verify(requestId: string, token: unknown): boolean {
    return this.check(requestId, token) === 'ok';
  }
}
