/**
 * vllm-ascend's MooncakeConnector side channels, so a mooncake-node rank pairs with a real vllm-ascend
 * node. Pull (MooncakeConnectorV1, the decode reads the prefill):
 *
 * - A prefill rank binds a ZMQ ROUTER on its handshake port, kv_port + dp_rank × tp_size + tp_rank
 *   (pp = pcp = 1), and answers `[b"get_meta_msg", ""]` with its MooncakeAgentMetadata and
 *   `[b"done_recving_msg", request_id, x]` with `b"ACK"` (the hold is released). Its engine runs in
 *   P2PHANDSHAKE mode on a free port, announced as `te_rpc_port`: the handshake port belongs to the ROUTER.
 * - A decode rank asks rank r of the prefill instance at `remote_host : remote_port + r` (REQ, 1 s
 *   timeouts, 3 tries), caches the answer per (engine id, port), reads `host:te_rpc_port` in one batch per
 *   prefill rank, then sends DONE to every prefill rank it was to read from, whatever happened.
 *
 * Push (MooncakeLayerwiseConnector, layerwise.ts): a decode rank binds the same ROUTER and answers the
 * prefill's GET_META with its layer metadata and its DONE_SENDING / FAILED_SENDING with ACK; a prefill rank
 * asks it, writes, and sends DONE_SENDING with the number of prefill ranks writing to that decode rank.
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
import { heldHeads, prefillRanksOf, sourcesForDecodeRank } from '../rank-map';
import { KV_REGISTRY_VERSION, type KvPeer } from '../registry';
import type { KvParamsExtra, KvPushSignal, KvSideChannel, KvSideChannelContext } from '../side-channel';
import { ReqClient, RouterServer } from '../zmq/sockets';
import { messageTag, pack, unpack } from '../zmq/wire';
import { agentMetadata, parseAgentMetadata, peerLayout } from './metadata';
import { DONE_SENDING_MSG, FAILED_SENDING_MSG, layerMetadata, layerwiseParams, parseLayerMetadata, SenderPaths } from './layerwise';

export const GET_META_MSG = 'get_meta_msg';
export const DONE_RECVING_MSG = 'done_recving_msg';
const ACK = Buffer.from('ACK');
/** Peer metadata remembered (vllm-ascend's SizedDict keeps 16000). */
const MAX_PEERS = 4096;

export class VllmAscendChannel implements KvSideChannel {
  readonly name = 'vllm-ascend' as const;
  /** vllm-ascend's params and DONE have no room for a token (the released peers would not echo it). */
  readonly tokens = false;
  private ctx!: KvSideChannelContext;
  private router: RouterServer | undefined;
  private readonly client = new ReqClient();
  private readonly peers = new Map<string, Promise<KvPeer>>();
  private host = '';
  private readonly senders = new SenderPaths();

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
    const o = this.o;
    // The prefill answers pull requests; the decode answers layerwise pushes (and pull decodes never bind
    // upstream, but the port is theirs by the same arithmetic).
    const meta = this.side === 'decode'
      ? pack(layerMetadata(ctx.engine.rpcPort, o.layout, ctx.caches.tensorAddresses, o.vllmAscend.layerNames))
      : pack(agentMetadata({
        profile: this.o.vllmAscend.profile,
        engineId: this.o.engineId,
        teRpcPort: ctx.engine.rpcPort,
        localIp: this.host,
        handshakePort: this.handshakePort,
        layout: this.o.layout,
        tensors: ctx.caches.tensorAddresses,
        layerNames: this.o.vllmAscend.layerNames,
        dtypeBytes: this.o.vllmAscend.dtypeBytes,
        ...(ctx.fence !== undefined ? { fence: ctx.fence } : {}),
      }));
    this.router = await RouterServer.bind(this.host, this.handshakePort, (payload) => this.onRequest(payload, meta), {
      onError: (err) => ctx.onWarning(new MooncakeError('PROTOCOL_ERROR', `side channel ${this.address}: ${(err as Error).message}`, { cause: err })),
    });
  }

  private malformed(what: string): undefined {
    this.ctx.metrics.malformed++;
    this.ctx.onRefused({ reason: 'malformed' });
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
    if (this.side === 'decode') return this.onPushSignal(tag, m);
    if (tag !== DONE_RECVING_MSG) return this.malformed(`unknown tag ${JSON.stringify(tag)}`);
    if (m.length < 3) return this.malformed(`a DONE of ${m.length} elements (3 expected)`);
    if (typeof m[1] !== 'string' || m[1] === '' || m[1].length > 1024) return this.malformed('a DONE without a request id (or one over 1024 characters)');
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

  /**
   * Layerwise pushes between unequal TP sizes go through vllm-ascend's staging buffers and an on-device
   * re-layout (pd_head_ratio), which have no counterpart here: equal TP only.
   */
  private checkLayerwiseTp(): void {
    if (this.o.prefill.tpSize !== this.o.decode.tpSize) {
      throw new MooncakeError('INVALID_CONFIG', `layerwise push on the vllm-ascend side channel needs equal prefill and decode tp_size (got ${this.o.prefill.tpSize} and ${this.o.decode.tpSize})`, {
        details: { field: 'tp_size' },
      });
    }
  }

  /** DONE_SENDING / FAILED_SENDING from a prefill rank that pushed (layerwise): a push_done for the consumer. */
  private onPushSignal(tag: string, m: unknown[]): Buffer | undefined {
    if (tag !== DONE_SENDING_MSG && tag !== FAILED_SENDING_MSG) return this.malformed(`unknown tag ${JSON.stringify(tag)}`);
    const [, rid, count, path] = m;
    if (typeof rid !== 'string' || rid === '' || typeof path !== 'string') return this.malformed(`a ${tag} without request id or sender path`);
    const expected = prefillRanksOf(sourcesForDecodeRank(rid, this.o.mapping, this.o.tpRank));
    if (typeof count === 'number' && count !== expected.length) {
      this.ctx.onWarning(new MooncakeError('INVALID_CONFIG', `${tag} for ${rid} counts ${count} prefill ranks; this decode rank expects ${expected.length} (prefill tp_size ${this.o.prefill.tpSize})`));
    }
    const rank = this.senders.rank(rid, path, expected);
    this.ctx.metrics.notifiesReceived++;
    if (rank !== undefined) {
      const [host, port] = path.split(':');
      this.ctx.onMessage({
        type: 'push_done',
        request_id: rid,
        from: { engine_id: '', dp_rank: 0, tp_rank: rank, tp_size: this.o.prefill.tpSize, host: host ?? '', rpc_port: Number(port) || 0 },
        ok: tag === DONE_SENDING_MSG,
        failed_block_ids: [],
        bytes: 0,
        ranges: 0,
      });
    }
    return ACK;
  }

  /**
   * Prefill (pull): exactly the keys vllm-ascend's request_finished returns, in its profile's shape.
   * Decode (push): what the layerwise decode posts to the proxy's metaserver.
   */
  transferParams(requestId: string, blockIds: readonly number[], extra: KvParamsExtra = {}): KvTransferParamsWire {
    if (this.side === 'decode') {
      this.checkLayerwiseTp();
      return layerwiseParams({ requestId, blockIds, blockSize: this.o.layout.blockSize, engineId: this.o.engineId, host: this.host, port: this.sideChannelPort, tpSize: this.o.decode.tpSize, cachedTokens: extra.cachedTokens ?? 0 });
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

  /**
   * As parseKvTransferParams; a decode (pull) requires remote_request_id, since the prefill ranks are
   * chosen from it (a layerwise decode's params name the request by request_id).
   */
  parseParams(input: unknown): KvTransferParams {
    const rid = (input as { remote_request_id?: unknown } | null)?.remote_request_id;
    if (this.side === 'decode' && input !== null && typeof input === 'object' && (typeof rid !== 'string' || rid === '')) {
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
    const port = p.remote_port + tpRank;
    const key = `${p.remote_engine_id}|${p.remote_host}:${port}`;
    let peer = this.peers.get(key);
    if (!peer) {
      peer = this.side === 'decode' ? this.fetchPeer(p, tpRank, port, key) : this.fetchDecode(p, tpRank, port, key);
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
    const peer = this.peer(key, layout, m.tensors, 'kv_producer', tpRank, p.remote_tp_size ?? o.prefill.tpSize, o.prefill.dpSize, `${p.remote_host}:${m.teRpcPort}`, p.remote_host, port, p.remote_port, `${m.engineId}@${m.teRpcPort}`, m.engineId);
    return m.fence !== undefined ? { ...peer, fence: m.fence } : peer;
  }

  /** A peer in registry-entry form (what the shared transfer code reads). */
  private peer(key: string, layout: KvLayout, tensors: bigint[], role: 'kv_producer' | 'kv_consumer', tpRank: number, tpSize: number, dpSize: number, segment: string, host: string, port: number, kvPort: number, instance: string, engineId: string): KvPeer {
    return {
      key,
      layout,
      tensors,
      entry: {
        version: KV_REGISTRY_VERSION,
        engine_id: engineId,
        role,
        dp_rank: 0,
        tp_rank: tpRank,
        dp_size: dpSize,
        tp_size: tpSize,
        segment,
        host,
        rpc_port: port,
        kv_port: kvPort,
        total_kv_heads: this.o.totalKvHeads,
        layout: layout.toJSON(),
        tensors: tensors.map(String),
        regions: [],
        pid: 0,
        instance,
        started_at: 0,
        heartbeat: 0,
      },
    };
  }

  /** Layerwise: the decode rank's layer metadata (GET_META with the request id, as upstream asks). */
  private async fetchDecode(p: KvTransferParams, tpRank: number, port: number, key: string): Promise<KvPeer> {
    this.checkLayerwiseTp();
    const who = `vllm-ascend decode ${p.remote_engine_id}/${tpRank} at ${p.remote_host}:${port}`;
    let answer: Buffer;
    try {
      answer = await this.client.request(p.remote_host, port, pack([Buffer.from(GET_META_MSG), p.remote_request_id]));
    } catch (err) {
      const e = err as MooncakeError;
      throw new MooncakeError(e.code ?? 'CONNECT_FAILED', `GET_META to ${who} got no answer: ${e.message}`, { cause: err, details: { host: p.remote_host, port } });
    }
    const o = this.o;
    const heads = heldHeads(o.layout.attention, o.totalKvHeads, o.decode.tpSize, tpRank).count;
    const m = parseLayerMetadata(unpack(answer), o.vllmAscend.layerNames, KvLayout.from({ ...layoutSpec(o.layout), numHeads: heads }), who);
    return this.peer(key, m.layout, m.tensors, 'kv_consumer', tpRank, p.remote_tp_size ?? o.decode.tpSize, o.decode.dpSize, `${p.remote_host}:${m.teRpcPort}`, p.remote_host, port, p.remote_port, `${p.remote_engine_id}@${m.teRpcPort}`, p.remote_engine_id);
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

  /**
   * Layerwise: nothing announces a push upstream; when it is over, DONE_SENDING (or FAILED_SENDING, which
   * 0.18 does not know: then nothing, and the decode times out) with the number of prefill ranks writing
   * to that decode rank and this rank's `host:port`.
   */
  async sendPush(peer: KvPeer, signal: KvPushSignal): Promise<boolean> {
    if (signal.type === 'push_start') return true;
    const e = peer.entry;
    const rid = signal.request_id;
    const senders = prefillRanksOf(sourcesForDecodeRank(rid, this.o.mapping, e.tp_rank)).length;
    if (!signal.ok && this.o.vllmAscend.profile === '0.18') {
      this.ctx.onWarning(new MooncakeError('REMOTE_REJECTED', `push of ${rid} to ${e.host}:${e.rpc_port} failed; vllm-ascend 0.18 has no failed_sending_msg, the decode will time out`));
      return false;
    }
    const tag = signal.ok ? DONE_SENDING_MSG : FAILED_SENDING_MSG;
    try {
      const reply = await this.client.request(e.host, e.rpc_port, pack([Buffer.from(tag), rid, senders, this.address]));
      if (!reply.equals(ACK)) throw new MooncakeError('PROTOCOL_ERROR', `${tag} answered ${JSON.stringify(reply.toString('latin1').slice(0, 32))}, not ACK`);
      this.ctx.metrics.notifiesSent++;
      return true;
    } catch (err) {
      this.ctx.metrics.notifiesFailed++;
      this.ctx.onWarning(new MooncakeError('CONNECTION_LOST', `${tag} for ${rid} to ${e.host}:${e.rpc_port} was not acknowledged: ${(err as Error).message}`, { cause: err }));
      return false;
    }
  }

  async close(): Promise<void> {
    this.client.close();
    this.peers.clear();
    await this.router?.close();
  }
}

function layoutSpec(l: KvLayout): Parameters<typeof KvLayout.from>[0] {
  return { attention: l.attention, numLayers: l.numLayers, numBlocks: l.numBlocks, blockSize: l.blockSize, headBytes: l.headBytes, numHeads: l.numHeads, headLayout: l.headLayout, ...(l.ropeBytes > 0 ? { ropeBytes: l.ropeBytes } : {}) };
}
