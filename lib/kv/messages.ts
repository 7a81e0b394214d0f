/**
 * KV notifications, carried by the engine's notify channel (upstream's handshake Notify: `{name, msg}`)
 * with `name` = KV_NOTIFY_NAME and `msg` = one JSON object:
 *
 * - `done`        consumer → producer (pull): the consumer is finished with the request's blocks (whatever
 *                 the result), so the producer may free them; `ok`/`failed_block_ids` report the result.
 * - `push_start`  producer → consumer (push): the producer began writing (the consumer now watches it).
 * - `push_done`   producer → consumer (push): the writes finished; `failed_block_ids` are the consumer's
 *                 block ids that did not arrive (never success for a partial transfer).
 *
 * Each carries `token`, the request token from the kv_transfer_params it is about (tokens.ts), and is
 * bounded: block ids are distinct and below the receiver's block count, and the whole message is at most
 * `kvMessageLimit(numBlocks)` bytes (checked before it is parsed).
 */
import type { Notify } from '../handshake';

export const KV_NOTIFY_NAME = 'mooncake-node/kv/1';

/**
 * `from.tp_rank` of a "done" whose side channel does not say which consumer rank sent it (vllm-ascend's
 * DONE carries only the request id): it releases the hold, as one DONE frees the blocks upstream.
 */
export const ANY_RANK = -1;

/** Identifies the sending rank. */
export interface KvRankRef {
  engine_id: string;
  dp_rank: number;
  tp_rank: number;
  tp_size: number;
  host: string;
  rpc_port: number;
}

/** The request token echoed from the params (tokens.ts); absent on side channels that carry none. */
interface Echo {
  token?: string;
}

export type KvMessage =
  | ({ type: 'done'; request_id: string; from: KvRankRef; ok: boolean; failed_block_ids: number[] } & Echo)
  | ({ type: 'push_start'; request_id: string; from: KvRankRef } & Echo)
  | ({ type: 'push_done'; request_id: string; from: KvRankRef; ok: boolean; failed_block_ids: number[]; bytes: number; ranges: number } & Echo);

export function encodeKvMessage(m: KvMessage): Notify {
  return { name: KV_NOTIFY_NAME, msg: JSON.stringify(m) };
}

/** Longest request id (as KvProducer/KvConsumer accept them), engine id, host and token in a message. */
const MAX_ID = 1024;
const MAX_NAME = 255;
const MAX_TOKEN = 64;

/** Largest KV message a rank with `numBlocks` blocks accepts: ids, names and every block id once. */
export function kvMessageLimit(numBlocks: number): number {
  return 16 * 1024 + numBlocks * (String(Math.max(0, numBlocks - 1)).length + 1);
}

/** What a message is counted as while it waits in memory (early messages): about its size as kept. */
export function kvMessageBytes(m: KvMessage): number {
  const failed = m.type === 'push_start' ? 0 : m.failed_block_ids.length;
  return 256 + 2 * (m.request_id.length + m.from.engine_id.length + m.from.host.length + (m.token?.length ?? 0)) + 8 * failed;
}

const isName = (v: unknown, max: number): v is string => typeof v === 'string' && v.length <= max;

function isRef(v: unknown): v is KvRankRef {
  if (v === null || typeof v !== 'object') return false;
  const r = v as Record<string, unknown>;
  return isName(r.engine_id, MAX_NAME) && Number.isSafeInteger(r.dp_rank) && Number.isSafeInteger(r.tp_rank) &&
    Number.isSafeInteger(r.tp_size) && isName(r.host, MAX_NAME) && Number.isSafeInteger(r.rpc_port);
}

/** Distinct integers in [0, numBlocks). */
function blockList(v: unknown, numBlocks: number): v is number[] {
  if (!Array.isArray(v) || v.length > numBlocks) return false;
  const seen = new Set<number>();
  for (const b of v) {
    if (!Number.isSafeInteger(b) || b < 0 || b >= numBlocks || seen.has(b)) return false;
    seen.add(b);
  }
  return true;
}

/** Why a notify that is a KV message was not decoded. */
export type KvDecodeFailure = 'malformed' | 'too-large';

/**
 * The KV message in a notify, for a receiver with `numBlocks` blocks (default: any block id below 2^31, a
 * message up to 1 MiB). `message` undefined: not a KV notify (`failure` undefined), or one that is too
 * large (refused unparsed) or malformed.
 */
export function decodeKvMessage(n: Notify, numBlocks?: number): { message?: KvMessage; failure?: KvDecodeFailure } {
  if (n.name !== KV_NOTIFY_NAME) return {};
  const limit = numBlocks === undefined ? 1 << 20 : kvMessageLimit(numBlocks);
  numBlocks ??= 2 ** 31;
  // UTF-16 units: at least the bytes of an ASCII message; JSON escapes only lengthen what a peer sends.
  if (n.msg.length > limit) return { failure: 'too-large' };
  let v: unknown;
  try {
    v = JSON.parse(n.msg);
  } catch {
    return { failure: 'malformed' };
  }
  if (v === null || typeof v !== 'object') return { failure: 'malformed' };
  const m = v as Record<string, unknown>;
  if (typeof m.request_id !== 'string' || m.request_id === '' || m.request_id.length > MAX_ID || !isRef(m.from)) return { failure: 'malformed' };
  if (m.token !== undefined && !isName(m.token, MAX_TOKEN)) return { failure: 'malformed' };
  const echo: Echo = m.token !== undefined ? { token: m.token } : {};
  if (m.type === 'push_start') return { message: { type: 'push_start', request_id: m.request_id, from: m.from, ...echo } };
  if (m.type === 'done' || m.type === 'push_done') {
    const failed = m.failed_block_ids;
    if (typeof m.ok !== 'boolean' || !blockList(failed, numBlocks)) return { failure: 'malformed' };
    const base = { request_id: m.request_id, from: m.from, ok: m.ok, failed_block_ids: failed, ...echo };
    if (m.type === 'done') return { message: { type: 'done', ...base } };
    const bytes = typeof m.bytes === 'number' && m.bytes >= 0 ? m.bytes : 0;
    const ranges = typeof m.ranges === 'number' && m.ranges >= 0 ? m.ranges : 0;
    return { message: { type: 'push_done', ...base, bytes, ranges } };
  }
  return { failure: 'malformed' };
}
