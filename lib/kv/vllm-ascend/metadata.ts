/**
 * vllm-ascend's `MooncakeAgentMetadata` (what a prefill rank answers to GET_META) in its two released
 * profiles, built from a mooncake-node layout and parsed back into one:
 *
 * - '0.18': `engine_id, te_rpc_port, kv_caches_base_addr` (flat: K then V of every layer; MLA: the
 *   latent), `num_blocks, local_ip`;
 * - '0.23': `engine_id, te_rpc_port, kv_group2layeridx {group (int key): [group_spec, [layer_idx]]},
 *   block_size, kv_caches_base_addr [[per tensor] per layer], block_size_scale, num_blocks, block_lens,
 *   block_strides, local_ip, handshake_port`.
 *
 * Addresses are msgpack int64; map keys of kv_group2layeridx are integers (msgspec rejects strings there).
 *
 * A mooncake-node prefill adds one key, `mooncake_node_fence` (the address of its hold fence, fence.ts),
 * so a mooncake-node decode can detect stale KV; vllm-ascend's decoders ignore keys they do not know
 * (msgspec structs without forbid_unknown_fields), and its prefills never send it.
 */
import { MooncakeError } from '../../errors';
import { KvLayout } from '../layout';
import type { VllmAscendProfile } from '../options';
import { asAddress, asInt, asRecord } from '../zmq/wire';

export interface AgentMetadataInput {
  profile: VllmAscendProfile;
  engineId: string;
  teRpcPort: number;
  localIp: string;
  handshakePort: number;
  layout: KvLayout;
  /** Absolute address of every tensor, in tensor order (layer-major, K then V). */
  tensors: readonly bigint[];
  layerNames: readonly string[];
  dtypeBytes: number;
  /** The rank's hold fence (mooncake-node's extension key). */
  fence?: bigint;
}

/** The metadata key of a mooncake-node prefill's hold fence. */
export const FENCE_KEY = 'mooncake_node_fence';

/** The metadata as msgspec encodes the struct (a map in field order, defaults omitted). */
export function agentMetadata(m: AgentMetadataInput): Record<string, unknown> {
  const L = m.layout;
  if (m.profile === '0.18') {
    return { engine_id: m.engineId, te_rpc_port: m.teRpcPort, kv_caches_base_addr: [...m.tensors], num_blocks: L.numBlocks, ...(m.localIp ? { local_ip: m.localIp } : {}), ...fenceKey(m) };
  }
  const perLayer = <T>(f: (t: number) => T): T[][] => [...Array(L.numLayers).keys()].map((l) => [...Array(L.tensorsPerLayer).keys()].map((k) => f(l * L.tensorsPerLayer + k)));
  const mla = L.attention === 'mla';
  const spec = {
    block_size: L.blockSize,
    num_kv_heads: L.numHeads,
    head_size: L.headBytes / m.dtypeBytes,
    num_key_value_heads: L.numHeads,
  };
  const groupSpec = {
    layer_names: [...m.layerNames],
    kv_cache_spec_type: mla ? 'MLAAttentionSpec' : 'FullAttentionSpec',
    kv_cache_spec: spec,
    kv_cache_group_id: 0,
  };
  return {
    engine_id: m.engineId,
    te_rpc_port: m.teRpcPort,
    kv_group2layeridx: new Map([[0, [groupSpec, [...Array(L.numLayers).keys()]]]]),
    block_size: L.blockSize,
    kv_caches_base_addr: perLayer((t) => m.tensors[t]),
    block_size_scale: perLayer(() => 1),
    num_blocks: L.numBlocks,
    block_lens: perLayer((t) => L.tensorBlockBytes(t)),
    block_strides: perLayer((t) => L.tensorBlockBytes(t)),
    ...(m.localIp ? { local_ip: m.localIp } : {}),
    ...(m.handshakePort ? { handshake_port: m.handshakePort } : {}),
    ...fenceKey(m),
  };
}

function fenceKey(m: AgentMetadataInput): Record<string, bigint> {
  return m.fence !== undefined ? { [FENCE_KEY]: m.fence } : {};
}

export interface ParsedAgentMetadata {
  engineId: string;
  teRpcPort: number;
  numBlocks: number;
  localIp: string;
  /** Every tensor's address, in tensor order. */
  tensors: bigint[];
  /** '0.23' metadata: per tensor block length, stride and block_size_scale (checked against the layout). */
  blockLens?: number[];
  blockStrides?: number[];
  blockSizeScale?: number[];
  blockSize?: number;
  /** A mooncake-node prefill's hold fence. */
  fence?: bigint;
}

function bad(what: string, value?: unknown): MooncakeError {
  return new MooncakeError('PROTOCOL_ERROR', `vllm-ascend metadata: ${what}`, { details: { value } });
}

function ints(v: unknown, name: string, address: boolean): (number | bigint)[] {
  if (!Array.isArray(v)) throw bad(`${name} is not a list`);
  return v.map((x) => {
    const r = address ? asAddress(x) : asInt(x);
    if (r === undefined) throw bad(`${name} holds ${typeof x === 'number' ? 'a non-integer' : typeof x} ${String(x)} (integers expected)`);
    return r;
  });
}

/** Parses a GET_META answer of either profile; PROTOCOL_ERROR naming what is wrong. */
export function parseAgentMetadata(raw: unknown): ParsedAgentMetadata {
  const o = asRecord(raw);
  if (!o) throw bad('not a map with string keys');
  const engineId = o.engine_id;
  const teRpcPort = asInt(o.te_rpc_port);
  const numBlocks = asInt(o.num_blocks);
  if (typeof engineId !== 'string' || engineId === '') throw bad('engine_id is missing', engineId);
  if (teRpcPort === undefined || teRpcPort <= 0 || teRpcPort > 65535) throw bad('te_rpc_port is not a port', o.te_rpc_port);
  if (numBlocks === undefined || numBlocks <= 0) throw bad('num_blocks is not a positive integer', o.num_blocks);
  const localIp = typeof o.local_ip === 'string' ? o.local_ip : '';
  const fence = o[FENCE_KEY] === undefined ? undefined : asAddress(o[FENCE_KEY]);
  if (o[FENCE_KEY] !== undefined && (fence === undefined || fence <= 0n)) throw bad(`${FENCE_KEY} is not an address`, o[FENCE_KEY]);
  const withFence = fence !== undefined ? { fence } : {};
  const addrs = o.kv_caches_base_addr;
  if (!Array.isArray(addrs)) throw bad('kv_caches_base_addr is not a list');
  if (addrs.every((a) => !Array.isArray(a))) {
    return { engineId, teRpcPort, numBlocks, localIp, tensors: ints(addrs, 'kv_caches_base_addr', true) as bigint[], ...withFence };
  }
  const flat = (v: unknown, name: string, address: boolean): (number | bigint)[] => {
    if (!Array.isArray(v) || v.length !== addrs.length) throw bad(`${name} does not list every layer`);
    return v.flatMap((layer, i) => ints(layer, `${name}[${i}]`, address));
  };
  const blockSize = asInt(o.block_size);
  if (blockSize === undefined || blockSize <= 0) throw bad('block_size is not a positive integer', o.block_size);
  return {
    engineId,
    teRpcPort,
    numBlocks,
    localIp,
    blockSize,
    tensors: flat(addrs, 'kv_caches_base_addr', true) as bigint[],
    blockLens: flat(o.block_lens, 'block_lens', false) as number[],
    blockStrides: flat(o.block_strides, 'block_strides', false) as number[],
    blockSizeScale: flat(o.block_size_scale, 'block_size_scale', false) as number[],
    ...withFence,
  };
}

/**
 * The layout of the peer that sent `m`, given the layout it must have (`expected`: this rank's layout with
 * the peer's head count): INVALID_CONFIG when the metadata disagrees (tensor count, block length, strides
 * or block size), so a mismatched model is an error, not garbage.
 */
export function peerLayout(m: ParsedAgentMetadata, expected: KvLayout): KvLayout {
  const layout = KvLayout.from({
    attention: expected.attention,
    numLayers: expected.numLayers,
    numBlocks: m.numBlocks,
    blockSize: expected.blockSize,
    headBytes: expected.headBytes,
    numHeads: expected.numHeads,
    headLayout: expected.headLayout,
    ...(expected.ropeBytes > 0 ? { ropeBytes: expected.ropeBytes } : {}),
  });
  const mismatch = (what: string): MooncakeError =>
    new MooncakeError('INVALID_CONFIG', `vllm-ascend rank ${m.engineId}: ${what}`, { details: { engineId: m.engineId } });
  if (m.tensors.length !== layout.tensorCount) throw mismatch(`${m.tensors.length} KV tensors, this layout has ${layout.tensorCount}`);
  if (m.blockSize !== undefined && m.blockSize !== layout.blockSize) throw mismatch(`block_size ${m.blockSize}, this layout ${layout.blockSize}`);
  const lens = m.blockLens ?? [];
  const strides = m.blockStrides ?? [];
  const scales = m.blockSizeScale ?? [];
  const want = [...Array(layout.tensorCount).keys()].map((t) => layout.tensorBlockBytes(t));
  if (lens.length > 0 && lens.some((l, t) => l !== want[t])) throw mismatch(`block_lens ${JSON.stringify(lens.slice(0, 4))}... bytes, expected ${JSON.stringify(want.slice(0, 4))}...`);
  if (strides.some((s, t) => s !== want[t])) throw mismatch(`block_strides ${JSON.stringify(strides.slice(0, 4))}...: only contiguous blocks (stride = block length) are supported`);
  if (scales.some((s) => s !== 1)) throw mismatch(`block_size_scale ${JSON.stringify([...new Set(scales)])}: kernel blocks smaller than vLLM blocks are not supported`);
  return layout;
}
