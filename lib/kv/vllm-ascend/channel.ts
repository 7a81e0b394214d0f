/**
 * vllm-ascend's MooncakeConnector side channel (pull: the decode reads the prefill), so a mooncake-node
 * rank pairs with a real vllm-ascend node:
 *
 * - A prefill rank binds a ZMQ ROUTER on its handshake port, kv_port + dp_rank × tp_size + tp_rank
 *   (pp = pcp = 1), and answers `[b"get_meta_msg", ""]` with its MooncakeAgentMetadata and
 *   `[b"done_recving_msg", request_id, x]` with `b"ACK"` (the hold is released). Its engine runs in
 *   P2PHANDSHAKE mode on a free port, announced as `te_rpc_port`: the handshake port belongs to the ROUTER.
 * - A decode rank asks rank r of the prefill instance at `remote_host : remote_port + r` (REQ, 1 s
 *   timeouts, 3 tries), caches the answer per (engine id, port), reads `host:te_rpc_port` in one batch per
 *   prefill rank, then sends DONE to every prefill rank it was to read from, whatever happened.
 *
 * Anything malformed (a str tag, a DONE without its third element, an unknown tag) is counted, reported as
 * a warning and not answered, as upstream does.
 */
import { MooncakeError } from '../../errors';
import type { TransferEngine, TransferEngineOptions } from '../../engine';
import { isP2PHandshake, P2P_HANDSHAKE } from '../../metadata/store';
import { KvLayout } from '../layout';
import { ANY_RANK } from '../messages';
import type { KvRankOptions, ResolvedKvOptions } from '../options';
import { parseKvTransferParams, type KvTransferParams, type KvTransferParamsWire } from '../params';
import { heldHeads } from '../rank-map';
import { KV_REGISTRY_VERSION, type KvPeer } from '../registry';
import type { KvDoneResult, KvParamsExtra, KvSideChannel, KvSideChannelContext } from '../side-channel';
import { ReqClient, RouterServer } from '../zmq/sockets';
import { messageTag, pack, unpack } from '../zmq/wire';
import { agentMetadata, parseAgentMetadata, peerLayout } from './metadata';

export const GET_META_MSG = 'get_meta_msg';
export const DONE_RECVING_MSG = 'done_recving_msg';
const ACK = Buffer.from('ACK');
/** Peer metadata remembered (vllm-ascend's SizedDict keeps 16000). */
const MAX_PEERS = 4096;

export class VllmAscendChannel implements KvSideChannel {
  readonly name = 'vllm-ascend' as const;
  private ctx!: KvSideChannelContext;
  private router: RouterServer | undefined;
  private readonly client = new ReqClient();
  private readonly peers = new Map<string, Promise<KvPeer>>();
  private host = '';

  private constructor(private readonly o: ResolvedKvOptions, private readonly side: 'prefill' | 'decode') {}

  static create(o: ResolvedKvOptions, _raw: KvRankOptions, side: 'prefill' | 'decode'): VllmAscendChannel {
    return new VllmAscendChannel(o, side);
  }

  private get own(): { dpSize: number; tpSize: number } {
    return this.side === 'prefill' ? this.o.prefill : this.o.decode;
  }

  /** kv_port + dp_rank × tp_size: vllm-ascend's side_channel_port (remote_port in the params). */
  private get sideChannelPort(): number {
    return (this.o.kvPort as number) + this.o.dpRank * this.own.tpSize;
  }

  /** The ROUTER's port: side_channel_port + tp_rank. The engine must not take it (it gets a free port). */
  get handshakePort(): number {
    return this.sideChannelPort + this.o.tpRank;
  }

  engineOptions(): Partial<TransferEngineOptions> {
    return { metadataServer: P2P_HANDSHAKE };
  }

  checkEngine(engine: TransferEngine): void {
    if (!isP2PHandshake(engine.metadataServer)) {
      throw new MooncakeError('INVALID_CONFIG', "the 'vllm-ascend' side channel needs an engine in P2PHANDSHAKE mode (vllm-ascend peers open 'host:te_rpc_port')", {
        details: { field: 'engine', value: engine.metadataServer },
      });
    }
    if (engine.rpcPort === this.handshakePort) {
      throw new MooncakeError('INVALID_CONFIG', `the engine listens on ${engine.rpcPort}, the vllm-ascend handshake port of this rank (kv_port + dp × tp + tp); give it another port`, {
        details: { field: 'engine.rpcPort', value: engine.rpcPort },
      });
    }
  }

  get address(): string {
    return `${this.host}:${this.handshakePort}`;
  }

  async start(ctx: KvSideChannelContext): Promise<void> {
    this.ctx = ctx;
    this.host = ctx.engine.advertiseAddress;
    if (this.side !== 'prefill') return; // pull: the decode only asks
    const meta = pack(
      agentMetadata({
        profile: this.o.vllmAscend.profile,
        engineId: this.o.engineId,
        teRpcPort: ctx.engine.rpcPort,
        localIp: this.host,
        handshakePort: this.handshakePort,
        layout: this.o.layout,
        tensors: ctx.caches.tensorAddresses,
        layerNames: this.o.vllmAscend.layerNames,
        dtypeBytes: this.o.vllmAscend.dtypeBytes,
      }),
    );
    this.router = await RouterServer.bind(this.host, this.handshakePort, (payload) => this.onRequest(payload, meta), {
      onError: (err) => ctx.onWarning(new MooncakeError('PROTOCOL_ERROR', `side channel ${this.address}: ${(err as Error).message}`, { cause: err })),
    });
  }

  private malformed(what: string): undefined {
    this.ctx.metrics.malformed++;
    this.ctx.onWarning(new MooncakeError('PROTOCOL_ERROR', `side channel ${this.address}: ${what}; not answered`));
    return undefined;
  }

  private onRequest(payload: Buffer, meta: Buffer): Buffer | undefined {
    let msg: unknown;
    try {
      msg = unpack(payload);
    } catch {
      return this.malformed('a request that is not msgpack');
    }
    const tag = messageTag(msg);
    if (tag === undefined) return this.malformed(`a request without a bin tag (${Array.isArray(msg) && typeof msg[0] === 'string' ? 'a str tag' : 'not an array'})`);
    const m = msg as unknown[];
    if (tag === GET_META_MSG) return meta;
    if (tag !== DONE_RECVING_MSG) return this.malformed(`unknown tag ${JSON.stringify(tag)}`);
    if (m.length < 3) return this.malformed(`a DONE of ${m.length} elements (3 expected)`);
    if (typeof m[1] !== 'string' || m[1] === '') return this.malformed('a DONE without a request id');
    this.ctx.metrics.notifiesReceived++;
    this.ctx.onMessage({
      type: 'done',
      request_id: m[1],
      // DONE does not say which decode rank sent it: one DONE releases the hold, as upstream.
      from: { engine_id: '', dp_rank: 0, tp_rank: ANY_RANK, tp_size: this.o.decode.tpSize, host: '', rpc_port: 0 },
      ok: true,
      failed_block_ids: [],
    });
    return ACK;
  }

  /** Exactly the keys vllm-ascend's request_finished returns, in its profile's shape. */
  transferParams(requestId: string, blockIds: readonly number[], extra: KvParamsExtra = {}): KvTransferParamsWire {
    if (this.side !== 'prefill') {
      throw new MooncakeError('NOT_IMPLEMENTED', "push mode (MooncakeLayerwiseConnector) is not available on the 'vllm-ascend' side channel");
    }
    const L = this.o.layout;
    const v023 = this.o.vllmAscend.profile === '0.23';
    const numPromptBlocks = extra.promptTokens !== undefined ? Math.ceil(extra.promptTokens / L.blockSize) : blockIds.length;
    const params: KvTransferParamsWire = {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_block_ids: v023 ? [[...blockIds]] : [...blockIds],
      remote_engine_id: this.o.engineId,
      remote_request_id: requestId,
      remote_host: this.host,
      remote_port: this.sideChannelPort,
      remote_pcp_size: 1,
      remote_dcp_size: 1,
      remote_ptp_size: this.o.prefill.tpSize,
      ...(extra.lastTokenId !== undefined ? { last_token_id: extra.lastTokenId } : {}),
      remote_multi_nodes_meta_mapping: {},
      num_prompt_blocks: numPromptBlocks,
      ...(v023 ? { remote_block_size: L.blockSize } : {}),
    };
    return params;
  }

  /** As parseKvTransferParams, but remote_request_id is required: the prefill ranks are chosen from it. */
  parseParams(input: unknown): KvTransferParams {
    const rid = (input as { remote_request_id?: unknown } | null)?.remote_request_id;
    if (input !== null && typeof input === 'object' && (typeof rid !== 'string' || rid === '')) {
      throw new MooncakeError('INVALID_ARGUMENT', `kv_transfer_params.remote_request_id must be a non-empty string on the vllm-ascend side channel (the prefill ranks are chosen from it), got ${JSON.stringify(rid)}`, {
        details: { field: 'kv_transfer_params.remote_request_id', value: rid },
      });
    }
    return parseKvTransferParams(input);
  }

  /** mooncake-node's params carry remote_total_kv_heads / remote_dp_rank, which vllm-ascend never emits. */
  checkParams(p: KvTransferParams): void {
    if (p.remote_total_kv_heads !== undefined || p.remote_dp_rank !== undefined) {
      throw new MooncakeError('INVALID_CONFIG', `kv_transfer_params of ${p.remote_request_id} come from a mooncake-node rank (remote_total_kv_heads / remote_dp_rank); this rank speaks vllm-ascend's side channel: create both sides with the same sideChannel`, {
        details: { field: 'sideChannel', expected: 'mooncake-node' },
      });
    }
    if (p.remote_pcp_size !== undefined && p.remote_pcp_size !== 1 || p.remote_dcp_size !== undefined && p.remote_dcp_size !== 1) {
      throw new MooncakeError('INVALID_CONFIG', 'context parallelism (remote_pcp_size / remote_dcp_size > 1) is not supported', { details: { field: 'remote_pcp_size' } });
    }
  }

  async lookup(p: KvTransferParams, tpRank: number, signal?: AbortSignal): Promise<KvPeer> {
    if (this.side !== 'decode') {
      throw new MooncakeError('NOT_IMPLEMENTED', "push mode (MooncakeLayerwiseConnector) is not available on the 'vllm-ascend' side channel");
    }
    const port = p.remote_port + tpRank;
    const key = `${p.remote_engine_id}|${p.remote_host}:${port}`;
    let peer = this.peers.get(key);
    if (!peer) {
      peer = this.fetchPeer(p, tpRank, port, key);
      this.peers.set(key, peer);
      if (this.peers.size > MAX_PEERS) this.peers.delete(this.peers.keys().next().value as string);
      peer.catch(() => this.peers.delete(key));
    }
    signal?.throwIfAborted();
    return peer;
  }

  private async fetchPeer(p: KvTransferParams, tpRank: number, port: number, key: string): Promise<KvPeer> {
    let answer: Buffer;
    try {
      answer = await this.client.request(p.remote_host, port, pack([Buffer.from(GET_META_MSG), '']));
    } catch (err) {
      const e = err as MooncakeError;
      throw new MooncakeError(e.code ?? 'CONNECT_FAILED', `GET_META to vllm-ascend rank ${p.remote_engine_id}/${tpRank} at ${p.remote_host}:${port} got no answer (is it a vllm-ascend prefill, or a mooncake-node one?): ${e.message}`, {
        cause: err,
        details: { host: p.remote_host, port },
      });
    }
    const m = parseAgentMetadata(unpack(answer));
    const o = this.o;
    const heads = heldHeads(o.layout.attention, o.totalKvHeads, o.prefill.tpSize, tpRank).count;
    const expected = KvLayout.from({ ...layoutSpec(o.layout), numHeads: heads });
    const layout = peerLayout(m, expected);
    return {
      key,
      layout,
      tensors: m.tensors,
      entry: {
        version: KV_REGISTRY_VERSION,
        engine_id: m.engineId,
        role: 'kv_producer',
        dp_rank: 0,
        tp_rank: tpRank,
        dp_size: o.prefill.dpSize,
        tp_size: p.remote_tp_size ?? o.prefill.tpSize,
        segment: `${p.remote_host}:${m.teRpcPort}`,
        host: p.remote_host,
        rpc_port: port,
        kv_port: p.remote_port,
        total_kv_heads: o.totalKvHeads,
        layout: layout.toJSON(),
        tensors: m.tensors.map(String),
        regions: [],
        pid: 0,
        instance: `${m.engineId}@${m.teRpcPort}`,
        started_at: 0,
        heartbeat: 0,
      },
    };
  }

  invalidate(peer: KvPeer): void {
    this.peers.delete(peer.key);
  }

  /** `[b"done_recving_msg", remote_request_id, None]` to the prefill rank's ROUTER, answered by `ACK`. */
  async sendDone(p: KvTransferParams, tpRank: number): Promise<boolean> {
    const metrics = this.ctx.metrics;
    try {
      const reply = await this.client.request(p.remote_host, p.remote_port + tpRank, pack([Buffer.from(DONE_RECVING_MSG), p.remote_request_id, null]));
      if (!reply.equals(ACK)) throw new MooncakeError('PROTOCOL_ERROR', `DONE answered ${JSON.stringify(reply.toString('latin1').slice(0, 32))}, not ACK`);
      metrics.notifiesSent++;
      return true;
    } catch (err) {
      metrics.notifiesFailed++;
      this.ctx.onWarning(new MooncakeError('CONNECTION_LOST', `DONE for ${p.remote_request_id} to ${p.remote_host}:${p.remote_port + tpRank} was not acknowledged: ${(err as Error).message}`, { cause: err }));
      return false;
    }
  }

  sendPush(): Promise<boolean> {
    return Promise.reject(new MooncakeError('NOT_IMPLEMENTED', "push mode (MooncakeLayerwiseConnector) is not available on the 'vllm-ascend' side channel"));
  }

  async close(): Promise<void> {
    this.client.close();
    this.peers.clear();
    await this.router?.close();
  }
}

function layoutSpec(l: KvLayout): Parameters<typeof KvLayout.from>[0] {
  return { attention: l.attention, numLayers: l.numLayers, numBlocks: l.numBlocks, blockSize: l.blockSize, headBytes: l.headBytes, numHeads: l.numHeads, headLayout: l.headLayout };
}
