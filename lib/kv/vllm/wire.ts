/**
 * The messages of vLLM's MooncakeConnector side channel (msgspec structs, msgpack maps keyed by field name,
 * fields equal to their default omitted):
 *
 * - `MooncakeXferMetadata`, decode → prefill (DEALER → ROUTER): the decode rank's engine address
 *   (`remote_hostname`, `remote_port`), `remote_tp_size`, `remote_tp_rank`, `req_blocks` {decode request id:
 *   [transfer_id, [[block ids] per KV-cache group]]}, and its registered regions, one per layer:
 *   `kv_caches_base_addr`, `block_lens` (stride), `kv_block_lens` (payload), `registered_layer_names`,
 *   `registered_layer_indices`, `registered_group_indices`, `registered_shared_group_ids`,
 *   `registered_row_offsets`; `remote_pp_size` (default 1) and `layout_id` (default 0: the regions come with
 *   every request; otherwise the prefill may keep them and answer LAYOUT_MISS when it lost them);
 * - `MooncakeXferResponse`, prefill → decode, one or more per request message: `status` (0 FINISH, 1
 *   CONTINUE, 2 ERROR, 3 LAYOUT_MISS), `ok_reqs`, `err_reqs`, `err_msg`, `layout_id`;
 * - `MooncakeLeaseHeartbeat` {lease_transfer_ids}, decode → prefill on the same socket, when leases are on.
 */
import { MooncakeError } from '../../errors';
import { asAddress, asInt, asRecord, pack, unpack } from '../zmq/wire';

export const XFER_STATUS = { FINISH: 0, CONTINUE: 1, ERROR: 2, LAYOUT_MISS: 3 } as const;
export type XferStatus = (typeof XFER_STATUS)[keyof typeof XFER_STATUS];

/** One registered region (a layer's KV tensor) as the metadata lists it. */
export interface XferRegion {
  base: bigint;
  /** Bytes from one block to the next. */
  blockLen: number;
  /** Bytes of a block's payload (≤ blockLen). */
  kvBlockLen: number;
  layerName: string;
  layerIndex: number;
  groupIndex: number;
  rowOffset: number;
}

export interface XferMetadata {
  host: string;
  port: number;
  tpSize: number;
  tpRank: number;
  ppSize: number;
  layoutId: bigint;
  /** decode request id → [transfer id, block ids per KV-cache group]. */
  reqBlocks: Map<string, { transferId: string; groups: number[][] }>;
  /** Empty when a nonzero layoutId stands for regions sent before. */
  regions: XferRegion[];
}

export interface XferResponse {
  status: number;
  okReqs: string[];
  errReqs: string[];
  errMsg: string | undefined;
  layoutId: bigint;
}

function bad(what: string): MooncakeError {
  return new MooncakeError('PROTOCOL_ERROR', `MooncakeXferMetadata: ${what}`);
}

function strings(v: unknown, name: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw bad(`${name} is not a list of str`);
  return v as string[];
}

function ints(v: unknown, name: string, fallback?: number): number[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw bad(`${name} is not a list of int`);
  return v.map((x) => {
    const n = asInt(x) ?? fallback;
    if (n === undefined) throw bad(`${name} holds ${typeof x} ${String(x)} (int expected)`);
    return n;
  });
}

function int(v: unknown, name: string, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback;
  const n = asInt(v);
  if (n === undefined) throw bad(`${name} is ${v === undefined ? 'missing' : `not an int (${typeof v})`}`);
  return n;
}

function layoutId(v: unknown): bigint {
  if (v === undefined) return 0n;
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  throw bad('layout_id is not an int');
}

/** The request as msgspec encodes it (map in field order, defaults omitted). */
export function encodeXferMetadata(m: XferMetadata): Buffer {
  const o: Record<string, unknown> = {
    remote_hostname: m.host,
    remote_port: m.port,
    remote_tp_size: m.tpSize,
    remote_tp_rank: m.tpRank,
    req_blocks: Object.fromEntries([...m.reqBlocks].map(([id, r]) => [id, [r.transferId, r.groups]])),
    kv_caches_base_addr: m.regions.map((r) => r.base),
    block_lens: m.regions.map((r) => r.blockLen),
    kv_block_lens: m.regions.map((r) => r.kvBlockLen),
  };
  if (m.regions.length > 0) {
    o.registered_layer_names = m.regions.map((r) => r.layerName);
    o.registered_layer_indices = m.regions.map((r) => r.layerIndex);
    o.registered_group_indices = m.regions.map((r) => r.groupIndex);
    o.registered_shared_group_ids = m.regions.map((r) => [r.groupIndex]);
    o.registered_row_offsets = m.regions.map((r) => r.rowOffset);
  }
  if (m.ppSize !== 1) o.remote_pp_size = m.ppSize;
  if (m.layoutId !== 0n) o.layout_id = m.layoutId;
  return pack(o);
}

/** Parses a request; PROTOCOL_ERROR naming what is wrong. */
export function parseXferMetadata(raw: unknown): XferMetadata {
  const o = asRecord(raw);
  if (!o) throw bad('not a map with str keys');
  if (typeof o.remote_hostname !== 'string' || o.remote_hostname === '') throw bad('remote_hostname is missing');
  const port = int(o.remote_port, 'remote_port');
  if (port <= 0 || port > 65535) throw bad(`remote_port ${port} is not a port`);
  const blocks = asRecord(o.req_blocks);
  if (!blocks) throw bad('req_blocks is not a map');
  const reqBlocks = new Map<string, { transferId: string; groups: number[][] }>();
  for (const [id, v] of Object.entries(blocks)) {
    if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== 'string' || !Array.isArray(v[1])) throw bad(`req_blocks[${JSON.stringify(id)}] is not [transfer_id, [[block ids]]]`);
    const groups = (v[1] as unknown[]).map((g, i) => ints(g, `req_blocks[${JSON.stringify(id)}][1][${i}]`));
    if (groups.some((g) => g.some((b) => b < 0))) throw bad(`req_blocks[${JSON.stringify(id)}] holds a negative block id`);
    reqBlocks.set(id, { transferId: v[0], groups });
  }
  const addrs = o.kv_caches_base_addr;
  if (!Array.isArray(addrs)) throw bad('kv_caches_base_addr is not a list');
  const bases = addrs.map((a) => {
    const b = asAddress(a);
    if (b === undefined) throw bad(`kv_caches_base_addr holds ${typeof a} ${String(a)}`);
    return b;
  });
  const blockLens = ints(o.block_lens, 'block_lens');
  const kvBlockLens = ints(o.kv_block_lens, 'kv_block_lens');
  const names = strings(o.registered_layer_names, 'registered_layer_names');
  const indices = ints(o.registered_layer_indices, 'registered_layer_indices');
  const groupsIdx = ints(o.registered_group_indices, 'registered_group_indices');
  const rows = ints(o.registered_row_offsets, 'registered_row_offsets');
  if (blockLens.length !== bases.length || kvBlockLens.length !== bases.length || names.length !== bases.length || indices.length !== bases.length) {
    throw bad(`the region lists differ in length (${bases.length} addresses, ${blockLens.length} block_lens, ${kvBlockLens.length} kv_block_lens, ${names.length} names, ${indices.length} indices)`);
  }
  const regions = bases.map((base, i) => ({
    base,
    blockLen: blockLens[i],
    kvBlockLen: kvBlockLens[i],
    layerName: names[i],
    layerIndex: indices[i],
    groupIndex: groupsIdx.length === bases.length ? groupsIdx[i] : 0,
    rowOffset: rows.length === bases.length ? rows[i] : -1,
  }));
  return {
    host: o.remote_hostname,
    port,
    tpSize: int(o.remote_tp_size, 'remote_tp_size'),
    tpRank: int(o.remote_tp_rank, 'remote_tp_rank'),
    ppSize: int(o.remote_pp_size, 'remote_pp_size', 1),
    layoutId: layoutId(o.layout_id),
    reqBlocks,
    regions,
  };
}

/** The transfer ids of a lease heartbeat, or undefined when the message is not one. */
export function heartbeatIds(raw: unknown): string[] | undefined {
  const o = asRecord(raw);
  const ids = o?.lease_transfer_ids;
  return Array.isArray(ids) && ids.length > 0 && ids.every((x) => typeof x === 'string') ? (ids as string[]) : undefined;
}

export function encodeXferResponse(r: { status: XferStatus; okReqs?: readonly string[]; errReqs?: readonly string[]; errMsg?: string; layoutId?: bigint }): Buffer {
  const o: Record<string, unknown> = { status: r.status };
  if (r.okReqs && r.okReqs.length > 0) o.ok_reqs = [...r.okReqs];
  if (r.errReqs && r.errReqs.length > 0) o.err_reqs = [...r.errReqs];
  if (r.errMsg !== undefined) o.err_msg = r.errMsg;
  if (r.layoutId !== undefined && r.layoutId !== 0n) o.layout_id = r.layoutId;
  return pack(o);
}

export function parseXferResponse(bytes: Buffer): XferResponse {
  const o = asRecord(unpack(bytes));
  const status = asInt(o?.status);
  if (!o || status === undefined) throw new MooncakeError('PROTOCOL_ERROR', 'MooncakeXferResponse without a status');
  const list = (v: unknown, name: string): string[] => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new MooncakeError('PROTOCOL_ERROR', `MooncakeXferResponse.${name} is not a list of str`);
    return v as string[];
  };
  return {
    status,
    okReqs: list(o.ok_reqs, 'ok_reqs'),
    errReqs: list(o.err_reqs, 'err_reqs'),
    errMsg: typeof o.err_msg === 'string' ? o.err_msg : undefined,
    layoutId: typeof o.layout_id === 'bigint' ? o.layout_id : typeof o.layout_id === 'number' ? BigInt(o.layout_id) : 0n,
  };
}

/** vLLM's extract_layer_index: the one integer in a layer name (`model.layers.7.self_attn.attn` → 7). */
export function layerIndexOf(name: string, fallback: number): number {
  const nums = name.split('.').filter((x) => /^\d+$/.test(x));
  return nums.length === 1 ? Number(nums[0]) : fallback;
}
