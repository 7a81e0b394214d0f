/**
 * KV notifications, carried by the engine's notify channel (upstream's handshake Notify: `{name, msg}`)
 * with `name` = KV_NOTIFY_NAME and `msg` = one JSON object:
 *
 * - `done`        consumer → producer (pull): the consumer is finished with the request's blocks (whatever
 *                 the result), so the producer may free them; `ok`/`failed_block_ids` report the result.
 * - `push_start`  producer → consumer (push): the producer began writing (the consumer now watches it).
 * - `push_done`   producer → consumer (push): the writes finished; `failed_block_ids` are the consumer's
 *                 block ids that did not arrive (never success for a partial transfer).
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

export type KvMessage =
  | { type: 'done'; request_id: string; from: KvRankRef; ok: boolean; failed_block_ids: number[] }
  | { type: 'push_start'; request_id: string; from: KvRankRef }
  | { type: 'push_done'; request_id: string; from: KvRankRef; ok: boolean; failed_block_ids: number[]; bytes: number; ranges: number };

export function encodeKvMessage(m: KvMessage): Notify {
  return { name: KV_NOTIFY_NAME, msg: JSON.stringify(m) };
}

function isRef(v: unknown): v is KvRankRef {
  if (v === null || typeof v !== 'object') return false;
  const r = v as Record<string, unknown>;
  return typeof r.engine_id === 'string' && Number.isSafeInteger(r.dp_rank) && Number.isSafeInteger(r.tp_rank) &&
    Number.isSafeInteger(r.tp_size) && typeof r.host === 'string' && Number.isSafeInteger(r.rpc_port);
}

/** The KV message in a notify; undefined when the notify is not one (or is malformed: `malformed` true). */
export function decodeKvMessage(n: Notify): { message?: KvMessage; malformed: boolean } {
  if (n.name !== KV_NOTIFY_NAME) return { malformed: false };
  let v: unknown;
  try {
    v = JSON.parse(n.msg);
  } catch {
    return { malformed: true };
  }
  if (v === null || typeof v !== 'object') return { malformed: true };
  const m = v as Record<string, unknown>;
  if (typeof m.request_id !== 'string' || !isRef(m.from)) return { malformed: true };
  if (m.type === 'push_start') return { message: { type: 'push_start', request_id: m.request_id, from: m.from }, malformed: false };
  if (m.type === 'done' || m.type === 'push_done') {
    const failed = m.failed_block_ids;
    if (typeof m.ok !== 'boolean' || !Array.isArray(failed) || failed.some((b) => !Number.isSafeInteger(b))) return { malformed: true };
    const base = { request_id: m.request_id, from: m.from, ok: m.ok, failed_block_ids: failed as number[] };
    if (m.type === 'done') return { message: { type: 'done', ...base }, malformed: false };
    const bytes = typeof m.bytes === 'number' && m.bytes >= 0 ? m.bytes : 0;
    const ranges = typeof m.ranges === 'number' && m.ranges >= 0 ? m.ranges : 0;
    return { message: { type: 'push_done', ...base, bytes, ranges }, malformed: false };
  }
  return { malformed: true };
}
