/**
 * `kv_transfer_params`: the per-request object vLLM's connectors return from the prefill and the proxy
 * passes to the decode. In pull mode the producer builds it (it names the producer); in
 * push mode the consumer builds it (it names the consumer) and the producer receives it.
 *
 * Fields follow vllm-ascend's MooncakeConnector; `remote_dp_rank`, `remote_tp_size` and
 * `remote_total_kv_heads` are mooncake-node additions that spare the receiver a guess. What vllm-ascend's
 * `request_finished` emits parses too: `remote_block_ids` as one list per KV-cache group (since 0.23; one
 * group is supported, the others must be empty) and `remote_ptp_size` for the tp size.
 */
import { MooncakeError, describeValue } from '../errors';

export interface KvTransferParams {
  do_remote_prefill: boolean;
  do_remote_decode: boolean;
  /** Engine id of the instance that holds (pull) or receives (push) the blocks. */
  remote_engine_id: string;
  /** Its address (informational: mooncake-node finds ranks through the registry). */
  remote_host: string;
  /** kv_port + dp_rank × tp_size of that instance when kv_port is set, else the rank's handshake port. */
  remote_port: number;
  /** Its block ids, one per block of the prompt (a per-group list of lists is flattened to its one group). */
  remote_block_ids: number[];
  /** The request id both sides hash for rank selection and use in notifications. */
  remote_request_id: string;
  /** Its data-parallel rank (mooncake-node). */
  remote_dp_rank?: number;
  /** Its tensor-parallel size (vllm-ascend HEAD's remote_ptp_size, generalised). */
  remote_tp_size?: number;
  /** The model's KV heads as it sees them (mooncake-node). */
  remote_total_kv_heads?: number;
  /** Tokens per block of that instance (vllm-ascend >= 0.23). */
  remote_block_size?: number;
  /** The prefill's tp size as vllm-ascend names it (copied to remote_tp_size when that is absent). */
  remote_ptp_size?: number;
  /** True when remote_block_ids came as one list per KV-cache group (vllm-ascend >= 0.23). */
  remote_block_ids_grouped?: boolean;
  /**
   * The request token of the rank that made the params (mooncake-node; tokens.ts): echoed in "done" and
   * push signals, which the maker refuses without it.
   */
  remote_token?: string;
  /** Anything else the sender put in (kept as is). */
  [extra: string]: unknown;
}

/** kv_transfer_params as a side channel emits them: vllm-ascend >= 0.23 lists block ids per KV-cache group. */
export type KvTransferParamsWire = { [K in keyof KvTransferParams as K extends 'remote_block_ids' ? never : K]: KvTransferParams[K] } & { remote_block_ids: number[] | number[][] };

function bad(field: string, value: unknown, what: string): MooncakeError {
  return new MooncakeError('INVALID_ARGUMENT', `kv_transfer_params.${field} must be ${what}, got ${describeValue(value)}`, {
    details: { field: `kv_transfer_params.${field}`, value },
  });
}

function optInt(o: Record<string, unknown>, field: string, min: number): number | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw bad(field, v, `an integer >= ${min}`);
  return v;
}

const isBlockId = (b: unknown): b is number => typeof b === 'number' && Number.isSafeInteger(b) && b >= 0;

/** Flat block ids, or one list per KV-cache group of which at most one is non-empty. */
function blockIds(v: unknown): { ids: number[]; grouped: boolean } {
  if (Array.isArray(v) && v.every(isBlockId)) return { ids: v, grouped: false };
  if (Array.isArray(v) && v.length > 0 && v.every((g) => Array.isArray(g) && g.every(isBlockId))) {
    const groups = (v as number[][]).filter((g) => g.length > 0);
    if (groups.length > 1) {
      throw new MooncakeError('INVALID_ARGUMENT', `kv_transfer_params.remote_block_ids has ${groups.length} non-empty KV-cache groups; one group (attention layers of one kind) is supported`, {
        details: { field: 'kv_transfer_params.remote_block_ids', value: v },
      });
    }
    return { ids: [...(groups[0] ?? [])], grouped: true };
  }
  throw bad('remote_block_ids', v, 'an array of non-negative integers (or one such array per KV-cache group)');
}

/**
 * Validates a `kv_transfer_params` object (from JSON) and returns it typed. Accepts `request_id` when
 * `remote_request_id` is missing, and `remote_port` as a decimal string. Errors are INVALID_ARGUMENT
 * naming the field.
 */
export function parseKvTransferParams(input: unknown): KvTransferParams {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw bad('(object)', input, 'an object');
  const o = input as Record<string, unknown>;
  const engineId = typeof o.remote_engine_id === 'number' && Number.isSafeInteger(o.remote_engine_id) ? String(o.remote_engine_id) : o.remote_engine_id;
  if (typeof engineId !== 'string' || engineId === '' || engineId.includes('/')) {
    throw bad('remote_engine_id', o.remote_engine_id, "a non-empty engine id without '/'");
  }
  if (typeof o.remote_host !== 'string') throw bad('remote_host', o.remote_host, 'a string');
  let port = o.remote_port;
  if (typeof port === 'string' && /^\d{1,5}$/.test(port)) port = Number(port);
  if (typeof port !== 'number' || !Number.isSafeInteger(port) || port < 0 || port > 65535) throw bad('remote_port', o.remote_port, 'a port number');
  const { ids, grouped } = blockIds(o.remote_block_ids);
  const rid = o.remote_request_id ?? o.request_id;
  if (typeof rid !== 'string' || rid === '') throw bad('remote_request_id', rid, 'a non-empty string');
  const dp = optInt(o, 'remote_dp_rank', 0);
  const ptp = optInt(o, 'remote_ptp_size', 1);
  const tp = optInt(o, 'remote_tp_size', 1) ?? ptp;
  const heads = optInt(o, 'remote_total_kv_heads', 1);
  // vllm-ascend's layerwise decode lists it per KV-cache group.
  const bs = Array.isArray(o.remote_block_size) && o.remote_block_size.length === 1 ? { remote_block_size: o.remote_block_size[0] } : o;
  const blockSize = optInt(bs, 'remote_block_size', 1);
  const out: KvTransferParams = {
    ...o,
    do_remote_prefill: o.do_remote_prefill === undefined ? true : Boolean(o.do_remote_prefill),
    do_remote_decode: Boolean(o.do_remote_decode),
    remote_engine_id: engineId,
    remote_host: o.remote_host,
    remote_port: port,
    remote_block_ids: ids,
    remote_request_id: rid,
  };
  if (dp !== undefined) out.remote_dp_rank = dp;
  if (tp !== undefined) out.remote_tp_size = tp;
  if (heads !== undefined) out.remote_total_kv_heads = heads;
  if (blockSize !== undefined) out.remote_block_size = blockSize;
  if (ptp !== undefined) out.remote_ptp_size = ptp;
  if (grouped) out.remote_block_ids_grouped = true;
  if (o.remote_token !== undefined && (typeof o.remote_token !== 'string' || o.remote_token.length > 64)) {
    throw bad('remote_token', o.remote_token, 'a string of at most 64 characters');
  }
  return out;
}

/** True when a request body's `kv_transfer_params` asks this decode instance to fetch remote KV. */
export function wantsRemotePrefill(params: unknown): boolean {
  return params !== null && typeof params === 'object' && (params as { do_remote_prefill?: unknown }).do_remote_prefill === true &&
    Array.isArray((params as { remote_block_ids?: unknown }).remote_block_ids);
}

/**
 * The blocks pair up tail-aligned: when the local side has fewer blocks (the decode's prefix cache already
 * covers the first ones), local block i pairs with remote block (remote.length − local.length + i).
 * Returns the remote ids paired with the local ones, or throws INVALID_ARGUMENT when local has more.
 */
export function alignBlocks(local: readonly number[], remote: readonly number[]): { remote: number[]; offset: number } {
  if (local.length > remote.length) {
    throw new MooncakeError('INVALID_ARGUMENT', `${local.length} local blocks but the peer offers only ${remote.length}`, {
      details: { local: local.length, remote: remote.length },
    });
  }
  const offset = remote.length - local.length;
  return { remote: remote.slice(offset), offset };
}

/**
 * Blocks that are written into (a pull's or an expectation's local blocks, a push's remote ones) must be
 * distinct: a block listed twice would receive two blocks' KV and keep one of them, reported as success.
 * INVALID_ARGUMENT before anything moves.
 */
export function checkDistinct(ids: readonly number[], field: string): void {
  const seen = new Set<number>();
  for (const id of ids) {
    if (seen.has(id)) {
      throw new MooncakeError('INVALID_ARGUMENT', `${field} lists block ${id} more than once: two blocks of KV cannot land in one block`, {
        details: { field, blockId: id },
      });
    }
    seen.add(id);
  }
}
