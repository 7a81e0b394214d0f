/**
 * vllm-ascend's MooncakeLayerwiseConnector side channel (push: the prefill writes into the decode):
 *
 * - the decode rank's ROUTER (kv_port + dp_rank × tp_size + tp_rank) answers `[b"get_meta_msg", request_id]`
 *   with `{te_rpc_port, layer_metadata: {layer name: {tensor_group_idx, kv_caches_base_addr, block_len,
 *   block_size_scale}}}`, and `[b"done_sending_msg" | b"failed_sending_msg", request_id, trans_count,
 *   "host:port"]` with `ACK`; the request is complete once `trans_count` distinct prefill ranks said done;
 * - the decode's kv_transfer_params (posted to the proxy's metaserver, handed to the prefill) name the decode
 *   by `request_id`, `remote_host`, `remote_port` (its kv_port + dp_rank × tp_size) and `remote_tp_size`.
 *
 * Layers are matched by vLLM layer name, so both sides must name them alike (`vllmAscend.layerNames`).
 */
import { MooncakeError } from '../../errors';
import type { KvLayout } from '../layout';
import type { KvTransferParamsWire } from '../params';
import { asAddress, asInt, asRecord } from '../zmq/wire';
import { peerLayout } from './metadata';

export const DONE_SENDING_MSG = 'done_sending_msg';
export const FAILED_SENDING_MSG = 'failed_sending_msg';

/** The decode rank's GET_META answer. */
export function layerMetadata(teRpcPort: number, layout: KvLayout, tensors: readonly bigint[], layerNames: readonly string[]): Record<string, unknown> {
  const per = layout.tensorsPerLayer;
  const layers: Record<string, unknown> = {};
  layerNames.forEach((name, l) => {
    const idx = [...Array(per).keys()];
    layers[name] = {
      tensor_group_idx: idx.map(() => 0),
      kv_caches_base_addr: idx.map((k) => tensors[l * per + k]),
      block_len: idx.map((k) => layout.tensorBlockBytes(l * per + k)),
      block_size_scale: idx.map(() => 1),
    };
  });
  return { te_rpc_port: teRpcPort, layer_metadata: layers };
}

/**
 * The tensors a decode's GET_META answer lists for our layers (by name, in our layer order), checked
 * against the layout the decode must have. PROTOCOL_ERROR when malformed, INVALID_CONFIG when it disagrees.
 */
export function parseLayerMetadata(raw: unknown, layerNames: readonly string[], expected: KvLayout, who: string): { teRpcPort: number; tensors: bigint[]; layout: KvLayout } {
  const o = asRecord(raw);
  const teRpcPort = asInt(o?.te_rpc_port);
  const layers = asRecord(o?.layer_metadata);
  if (!o || !layers || teRpcPort === undefined || teRpcPort <= 0 || teRpcPort > 65535) {
    throw new MooncakeError('PROTOCOL_ERROR', `layerwise metadata of ${who} lacks te_rpc_port or layer_metadata`);
  }
  const tensors: bigint[] = [];
  const lens: number[] = [];
  const scales: number[] = [];
  for (const name of layerNames) {
    const m = asRecord(layers[name]);
    if (!m) throw new MooncakeError('INVALID_CONFIG', `${who} has no layer '${name}' (its layers: ${Object.keys(layers).slice(0, 4).join(', ')}...): set vllmAscend.layerNames to vLLM's names`, { details: { layer: name } });
    const addrs = Array.isArray(m.kv_caches_base_addr) ? m.kv_caches_base_addr.map(asAddress) : [];
    if (addrs.length !== expected.tensorsPerLayer || addrs.some((a) => a === undefined)) {
      throw new MooncakeError('INVALID_CONFIG', `${who} layer '${name}' has ${addrs.length} KV tensors, this layout ${expected.tensorsPerLayer}`);
    }
    tensors.push(...(addrs as bigint[]));
    lens.push(...(Array.isArray(m.block_len) ? m.block_len.map((x) => asInt(x) ?? -1) : []));
    scales.push(...(Array.isArray(m.block_size_scale) ? m.block_size_scale.map((x) => asInt(x) ?? -1) : []));
  }
  const layout = peerLayout({ engineId: who, teRpcPort, numBlocks: expected.numBlocks, localIp: '', tensors, blockLens: lens, blockStrides: lens, blockSizeScale: scales }, expected);
  return { teRpcPort, tensors, layout };
}

/** What the layerwise decode's scheduler posts to the metaserver for a request (and the prefill receives). */
export function layerwiseParams(a: {
  requestId: string;
  blockIds: readonly number[];
  blockSize: number;
  engineId: string;
  host: string;
  port: number;
  tpSize: number;
  cachedTokens: number;
}): KvTransferParamsWire {
  return {
    token_ids: [],
    request_id: a.requestId,
    do_remote_prefill: false,
    do_remote_decode: true,
    remote_block_ids: [[...a.blockIds]],
    remote_block_size: [a.blockSize],
    remote_engine_id: a.engineId,
    remote_host: a.host,
    remote_port: a.port,
    remote_tp_size: a.tpSize,
    remote_pcp_size: 1,
    remote_dcp_size: 1,
    remote_cached_tokens: a.cachedTokens,
  } as unknown as KvTransferParamsWire;
}

/**
 * Which prefill rank a DONE_SENDING came from: the message names only a `host:port` and a count, so each
 * distinct path of a request takes the next rank it was expected from. Bounded: at most `max` requests.
 */
export class SenderPaths {
  private readonly byRequest = new Map<string, Map<string, number>>();
  constructor(private readonly max = 10_000) {}

  /** The rank for `path` of `requestId`, or undefined when every expected rank already reported. */
  rank(requestId: string, path: string, expected: readonly number[]): number | undefined {
    let m = this.byRequest.get(requestId);
    if (!m) {
      if (this.byRequest.size >= this.max) this.byRequest.delete(this.byRequest.keys().next().value as string);
      m = new Map();
      this.byRequest.set(requestId, m);
    }
    const known = m.get(path);
    if (known !== undefined) return known;
    const taken = new Set(m.values());
    const next = expected.find((r) => !taken.has(r));
    if (next !== undefined) m.set(path, next);
    if (m.size >= expected.length) this.byRequest.delete(requestId);
    return next;
  }
}
