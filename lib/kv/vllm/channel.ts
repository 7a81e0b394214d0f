/**
 * vLLM's own MooncakeConnector side channel, so a mooncake-node rank pairs with real vLLM nodes (the prefill
 * writes; the decode asks):
 *
 * - Prefill: a ZMQ ROUTER on a free port; the rank registers `tcp://host:port` with the instance's bootstrap
 *   server (bootstrap.ts; dp rank 0, tp rank 0 serves it unless `vllm.bootstrapAddress` names another). Decode
 *   ranks send MooncakeXferMetadata (sender.ts keeps them); `KvProducer.push(params, blockIds)` with the
 *   prefill's params (`transfer_id`) waits for them, writes each decode rank's head slices (the rank mapping's
 *   'vllm' selection: vLLM's handshake ranks and head resharding), and answers each request.
 * - Decode: `KvConsumer.pull(params, blockIds)` with the decode's params (`transfer_id`,
 *   `remote_bootstrap_addr`, `remote_engine_id`) queries the bootstrap server and asks every prefill rank of
 *   its handshake set (receiver.ts); blocks count as arrived only when every one of them answered ok.
 *
 * The engine runs in P2PHANDSHAKE mode (vLLM peers open `host:rpc_port`). Malformed requests are answered with
 * an ERROR response, as vLLM's prefill does, and refused (metrics().refused, the 'refused' event), as are
 * requests from a rank this one does not pair with, of another decode tp size, or naming a block twice. vLLM's
 * messages carry no request token (`tokens` false): what this channel can check is in docs/vllm.md.
 */
import { MooncakeError } from '../../errors';
import type { TransferEngine, TransferEngineOptions } from '../../engine';
import { P2P_HANDSHAKE } from '../../metadata/store';
import { KvLayout } from '../layout';
import type { KvRefusalReason, KvTransferOutcome } from '../metrics';
import type { KvRankOptions, ResolvedKvOptions } from '../options';
import { checkDistinct, type KvTransferParams, type KvTransferParamsWire } from '../params';
import type { BatchResult } from '../rank';
import { heldHeads, vllmRequesters, vllmTargetRanks, type HeadSlice } from '../rank-map';
import { KV_REGISTRY_VERSION, type KvPeer } from '../registry';
import { checkP2PEngine, type KvPushSignal, type KvSideChannel, type KvSideChannelContext } from '../side-channel';
import { StreamRouter } from '../zmq/stream';
import { unpack } from '../zmq/wire';
import { BootstrapServer, bootstrapUrl, registerWorker } from './bootstrap';
import { BootstrapCache, pullFromPrefill } from './receiver';
import { ownRegions, peerFromRegions, vllmLayoutProblem } from './regions';
import { PullBook, type Pull } from './sender';
import { heartbeatIds, parseXferMetadata, XFER_STATUS, type XferMetadata, type XferRegion } from './wire';

/** Decode layouts remembered by layout_id (vLLM's _MAX_PEER_LAYOUTS). */
const MAX_LAYOUTS = 1024;

export class VllmChannel implements KvSideChannel {
  readonly name = 'vllm' as const;
  /** vLLM's messages have no field a request token could ride in (see docs/vllm.md, what it checks). */
  readonly tokens = false;
  private ctx!: KvSideChannelContext;
  private router: StreamRouter | undefined;
  private server: BootstrapServer | undefined;
  private host = '';
  private regions: XferRegion[] = [];
  private readonly book: PullBook;
  private readonly bootstrap: BootstrapCache;
  private readonly layouts = new Map<string, XferRegion[]>();
  private readonly served = new Map<string, Pull>();

  private constructor(private readonly o: ResolvedKvOptions, private readonly side: 'prefill' | 'decode') {
    this.book = new PullBook(() => this.router, o.abortTimeoutMs);
    this.bootstrap = new BootstrapCache(o.notifyTimeoutMs * 10);
  }

  /** INVALID_CONFIG for a layout vLLM does not register (it needs one tensor per layer). */
  static create(o: ResolvedKvOptions, _raw: KvRankOptions, side: 'prefill' | 'decode'): VllmChannel {
    const problem = vllmLayoutProblem(o.layout);
    if (problem) throw new MooncakeError('INVALID_CONFIG', `the 'vllm' side channel: ${problem}`, { details: { field: 'layout' } });
    return new VllmChannel(o, side);
  }

  engineOptions(): Partial<TransferEngineOptions> {
    return { metadataServer: P2P_HANDSHAKE };
  }

  checkEngine(engine: TransferEngine): void {
    checkP2PEngine(engine, this.name, 'rpc_port');
  }

  /** Prefill: its side channel's `tcp://host:port`; decode: its host. */
  get address(): string {
    return this.router ? `tcp://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.router.port}` : this.host;
  }

  /** Prefill: where decodes find this instance (remote_bootstrap_addr), `http://host:port`. */
  get bootstrapAddress(): string {
    return bootstrapUrl(this.o.vllm.bootstrapAddress ?? this.server?.url ?? `${this.o.vllm.bootstrapHost ?? this.host}:${this.o.vllm.bootstrapPort}`);
  }

  async start(ctx: KvSideChannelContext): Promise<void> {
    this.ctx = ctx;
    this.host = ctx.engine.advertiseAddress;
    const o = this.o;
    this.regions = ownRegions(o.layout, ctx.caches.tensorAddresses, o.vllm.layerNames);
    if (this.side === 'decode') return;
    try {
      this.router = await StreamRouter.bind(this.host, 0, (identity, payload) => this.onRequest(identity, payload), {
        sendTimeoutMs: o.notifyTimeoutMs,
        onError: (err) => ctx.onWarning(new MooncakeError('PROTOCOL_ERROR', `side channel ${this.address}: ${(err as Error).message}`, { cause: err })),
      });
      if (o.vllm.bootstrapAddress === undefined && o.dpRank === 0 && o.tpRank === 0) {
        this.server = await BootstrapServer.listen(o.vllm.bootstrapHost ?? this.host, o.vllm.bootstrapPort);
      }
      await registerWorker(this.bootstrapAddress, { engine_id: o.engineId, dp_rank: o.dpRank, tp_rank: o.tpRank, pp_rank: 0, addr: this.address }, { timeoutMs: o.notifyTimeoutMs * 10 });
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /**
   * Prefill: the params a decode needs to ask this instance for `requestId` (what vLLM's proxy sends decode:
   * transfer_id, remote_bootstrap_addr, remote_engine_id). Decode: not used (pull takes the proxy's params).
   */
  transferParams(requestId: string): KvTransferParamsWire {
    if (this.side === 'decode') throw new MooncakeError('INVALID_CONFIG', "a 'vllm' decode rank asks the prefill: call pull(params, blockIds) with the params the proxy gave");
    return {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_bootstrap_addr: this.bootstrapAddress,
      remote_engine_id: this.o.engineId,
      transfer_id: requestId,
    } as unknown as KvTransferParamsWire;
  }

  /**
   * vLLM's params name the transfer by `transfer_id` (the prefill's and the decode's alike); a decode's also
   * name the prefill instance (`remote_engine_id`) and its bootstrap server (`remote_bootstrap_addr`).
   */
  parseParams(input: unknown): KvTransferParams {
    const o = input !== null && typeof input === 'object' && !Array.isArray(input) ? (input as Record<string, unknown>) : undefined;
    const bad = (field: string, what: string, value: unknown): MooncakeError =>
      new MooncakeError('INVALID_ARGUMENT', `kv_transfer_params.${field} must be ${what} on the 'vllm' side channel, got ${JSON.stringify(value) ?? 'nothing'}`, { details: { field: `kv_transfer_params.${field}`, value } });
    if (!o) throw bad('(object)', 'an object', input);
    const tid = o.transfer_id;
    if (typeof tid !== 'string' || tid === '' || tid.length > 1024) {
      if (typeof o.remote_host === 'string' && Array.isArray(o.remote_block_ids)) {
        throw new MooncakeError('INVALID_CONFIG', "these kv_transfer_params come from a mooncake-node or vllm-ascend rank (remote_host, remote_block_ids, no transfer_id); this rank speaks vLLM's side channel: create both sides with the same sideChannel", {
          details: { field: 'sideChannel' },
        });
      }
      throw bad('transfer_id', 'a non-empty string (vLLM\'s proxy sends "xfer-<request id>")', tid);
    }
    const engineId = o.remote_engine_id;
    const addr = o.remote_bootstrap_addr;
    if (this.side === 'decode') {
      if (typeof engineId !== 'string' || engineId === '') throw bad('remote_engine_id', "the prefill instance's engine id", engineId);
      if (typeof addr !== 'string' || !/^(https?:\/\/)?[^\s/]+:\d{1,5}\/?$/.test(addr)) throw bad('remote_bootstrap_addr', "the prefill's bootstrap server, http://host:port", addr);
    }
    return {
      ...o,
      do_remote_prefill: this.side === 'decode',
      do_remote_decode: this.side === 'prefill',
      remote_engine_id: typeof engineId === 'string' && engineId !== '' ? engineId : 'vllm-decode',
      remote_host: '',
      remote_port: 0,
      remote_block_ids: [],
      remote_request_id: tid,
      transfer_id: tid,
    };
  }

  checkParams(): void {}

  peerRanks(_requestId: string, tpRank: number): number[] {
    return this.side === 'decode' ? vllmTargetRanks(this.o.mapping, tpRank) : vllmRequesters(this.o.mapping, tpRank);
  }

  // ------------------------------------------------------------------------------------------------------
  // Prefill

  private onRequest(identity: Buffer, payload: Buffer): void {
    let meta: XferMetadata;
    try {
      const raw = unpack(payload);
      if (heartbeatIds(raw)) {
        void this.book.reject(identity, XFER_STATUS.ERROR, 'kv_lease_duration is not set on this prefill instance.');
        return;
      }
      meta = parseXferMetadata(raw);
    } catch (err) {
      this.ctx.metrics.count('malformed');
      this.ctx.onRefused({ reason: 'malformed' });
      this.ctx.onWarning(new MooncakeError('PROTOCOL_ERROR', `side channel ${this.address}: ${(err as Error).message}`, { cause: err }));
      void this.book.reject(identity, XFER_STATUS.ERROR, (err as Error).message);
      return;
    }
    this.ctx.metrics.count('notifiesReceived');
    const problem = this.requestProblem(meta);
    if (problem) {
      if (problem.refused) this.refused(meta, problem.refused);
      this.ctx.onWarning(new MooncakeError('INVALID_CONFIG', `side channel ${this.address}: ${problem.why}`));
      void this.book.reject(identity, XFER_STATUS.ERROR, problem.why);
      return;
    }
    const key = `${meta.host}:${meta.port}|${meta.tpRank}|${meta.tpSize}|${meta.layoutId}`;
    if (meta.regions.length === 0 && meta.layoutId !== 0n) {
      const known = this.layouts.get(key);
      if (!known) {
        void this.book.reject(identity, XFER_STATUS.LAYOUT_MISS, `Mooncake KV layout 0x${meta.layoutId.toString(16)} from ${meta.host}:${meta.port} is not cached.`);
        return;
      }
      meta = { ...meta, regions: known };
    } else {
      try {
        peerFromRegions(meta.regions, this.o.vllm.layerNames, this.decodeLayout(meta.tpRank), undefined, `decode ${meta.host}:${meta.port} rank ${meta.tpRank}`);
      } catch (err) {
        this.ctx.onWarning(err as MooncakeError);
        void this.book.reject(identity, XFER_STATUS.ERROR, (err as Error).message);
        return;
      }
      if (meta.layoutId !== 0n) {
        this.layouts.set(key, meta.regions);
        if (this.layouts.size > MAX_LAYOUTS) this.layouts.delete(this.layouts.keys().next().value as string);
      }
    }
    this.book.accept(identity, meta, (transferId, groups) => this.blocksProblem(meta, transferId, groups));
  }

  /**
   * Why a decode's request cannot be served at all (vLLM answers those with ERROR), or undefined. A sender
   * that is not a decode rank this rank pairs with is also a refusal (KvRefusalReason): it is never kept.
   */
  private requestProblem(m: XferMetadata): { why: string; refused?: KvRefusalReason } | undefined {
    const o = this.o;
    if (m.tpSize !== o.decode.tpSize) return { why: `the decode has tp_size ${m.tpSize}; this prefill is configured for decode tp_size ${o.decode.tpSize}`, refused: 'wrong-tp-size' };
    const peers = vllmRequesters(o.mapping, o.tpRank);
    if (!peers.includes(m.tpRank)) return { why: `This D tp_rank ${m.tpRank} is not paired with P tp_rank ${o.tpRank}; expected one of [${peers.join(', ')}].`, refused: 'not-a-peer' };
    if (m.ppSize !== 1) return { why: `the decode has pp_size ${m.ppSize}; pipeline parallelism is not supported` };
    return undefined;
  }

  /**
   * Why one request of a message cannot be served (answered in err_reqs, not kept): more than one KV-cache
   * group, or a block listed twice (refused 'bad-block-ids': two blocks of KV cannot land in one block).
   */
  private blocksProblem(m: XferMetadata, transferId: string, groups: number[][]): string | undefined {
    const used = groups.filter((g) => g.length > 0);
    if (used.length > 1) return 'KV group count mismatch';
    try {
      checkDistinct(used[0] ?? [], `the request for ${transferId}`);
    } catch (err) {
      this.refused(m, 'bad-block-ids', transferId);
      return (err as Error).message;
    }
    return undefined;
  }

  private refused(m: XferMetadata, reason: KvRefusalReason, requestId?: string): void {
    this.ctx.onRefused({
      reason,
      ...(requestId !== undefined ? { requestId } : {}),
      from: { engineId: `vllm@${m.host}:${m.port}`, dpRank: 0, tpRank: m.tpRank, tpSize: m.tpSize, host: m.host },
    });
  }

  /** The layout decode rank `tpRank` must have: this rank's, with that rank's head count. */
  private decodeLayout(tpRank: number): KvLayout {
    const L = this.o.layout;
    const heads = heldHeads(L.attention, this.o.totalKvHeads, this.o.decode.tpSize, tpRank).count;
    return KvLayout.from({ attention: L.attention, numLayers: L.numLayers, numBlocks: L.numBlocks, blockSize: L.blockSize, headBytes: L.headBytes, numHeads: heads, headLayout: L.headLayout, ...(L.combinedKv ? { combinedKv: true } : {}) });
  }

  async awaitRequest(p: KvTransferParams, signal?: AbortSignal): Promise<KvTransferParams> {
    const pull = await this.book.wait(p.remote_request_id, undefined, this.o.abortTimeoutMs, signal);
    return { ...p, remote_block_ids: [...pull.blockIds], remote_tp_size: pull.meta.tpSize, remote_host: pull.meta.host, remote_port: pull.meta.port, remote_engine_id: `vllm@${pull.meta.host}:${pull.meta.port}` };
  }

  /** Prefill: decode rank `tpRank`'s request for the transfer (waited for), as a peer to write to. */
  async lookup(p: KvTransferParams, tpRank: number, signal?: AbortSignal): Promise<KvPeer> {
    if (this.side === 'decode') throw new MooncakeError('INVALID_CONFIG', "a 'vllm' decode rank does not look prefill ranks up: pull() asks them");
    const pull = await this.book.wait(p.remote_request_id, tpRank, this.o.abortTimeoutMs, signal);
    const m = pull.meta;
    const who = `decode ${m.host}:${m.port} rank ${tpRank}`;
    try {
      if (pull.blockIds.length !== p.remote_block_ids.length || pull.blockIds.some((b, i) => b !== p.remote_block_ids[i])) {
        throw new MooncakeError('PROTOCOL_ERROR', `${who} asked for ${p.remote_request_id} into other blocks than its other ranks`);
      }
      const numBlocks = Math.max(this.o.layout.numBlocks, ...pull.blockIds.map((b) => b + 1));
      const { layout, tensors } = peerFromRegions(m.regions, this.o.vllm.layerNames, this.decodeLayout(tpRank), numBlocks, who);
      const key = `${p.remote_request_id}#${tpRank}`;
      this.served.set(key, pull);
      return peerOf(key, layout, tensors, m, tpRank, this.o.totalKvHeads, this.o.decode.dpSize);
    } catch (err) {
      await this.book.answer(pull, false, (err as Error).message);
      throw err;
    }
  }

  invalidate(): void {}

  sendDone(): Promise<boolean> {
    return Promise.resolve(true);
  }

  async sendPush(peer: KvPeer, signal: KvPushSignal): Promise<boolean> {
    if (signal.type === 'push_start') return true;
    const pull = this.served.get(peer.key);
    if (!pull) return false;
    this.served.delete(peer.key);
    const delivered = await this.book.answer(pull, signal.ok, signal.ok ? undefined : `Mooncake transfer failed on P side: ${signal.error ?? `${signal.failed_block_ids.length} blocks`}`);
    if (delivered) this.ctx.metrics.count('notifiesSent');
    else this.ctx.metrics.count('notifiesFailed');
    return delivered;
  }

  /** The push of a transfer is over: requests not answered yet (it failed before reaching them) get an error. */
  async pushSettled(p: KvTransferParams, outcome: KvTransferOutcome): Promise<void> {
    const tid = p.remote_request_id;
    const why = outcome.error?.message ?? 'the prefill did not push this request';
    for (;;) {
      const pull = this.book.find(tid);
      if (!pull) break;
      for (const [k, v] of this.served) if (v === pull) this.served.delete(k);
      await this.book.answer(pull, false, why);
      if (this.book.find(tid) === pull) break;
    }
    this.book.finish(tid);
  }

  // ------------------------------------------------------------------------------------------------------
  // Decode

  receive(p: KvTransferParams, tpRank: number, blockIds: number[], slices: readonly HeadSlice[], deadline: number, signal?: AbortSignal): Promise<BatchResult> {
    const L = this.o.layout;
    const heads = slices.reduce((a, s) => a + s.count, 0);
    return pullFromPrefill({
      bootstrap: this.bootstrap,
      bootstrapAddress: String(p.remote_bootstrap_addr),
      engineId: p.remote_engine_id,
      transferId: p.remote_request_id,
      requestId: p.remote_request_id,
      prefillRank: tpRank,
      prefillTp: this.o.prefill.tpSize,
      blockIds,
      expectedBytes: heads * L.blockSize * L.headBytes * L.numLayers * blockIds.length,
      host: this.host,
      port: this.ctx.engine.rpcPort,
      tpRank: this.o.tpRank,
      tpSize: this.o.decode.tpSize,
      regions: this.regions,
      deadline,
      connectTimeoutMs: this.o.notifyTimeoutMs,
      signal,
    });
  }

  async close(): Promise<void> {
    await this.book.close('the prefill rank closed');
    await this.router?.close();
    this.router = undefined;
    await this.server?.close();
    this.served.clear();
  }
}

/** A decode rank that asked, in registry-entry form (what the shared transfer code reads). */
function peerOf(key: string, layout: KvLayout, tensors: bigint[], m: XferMetadata, tpRank: number, totalKvHeads: number, dpSize: number): KvPeer {
  return {
    key,
    layout,
    tensors,
    entry: {
      version: KV_REGISTRY_VERSION,
      engine_id: `vllm@${m.host}:${m.port}`,
      role: 'kv_consumer',
      dp_rank: 0,
      tp_rank: tpRank,
      dp_size: dpSize,
      tp_size: m.tpSize,
      segment: `${m.host}:${m.port}`,
      host: m.host,
      rpc_port: m.port,
      kv_port: null,
      total_kv_heads: totalKvHeads,
      layout: layout.toJSON(),
      tensors: tensors.map(String),
      regions: [],
      pid: 0,
      instance: `${m.host}:${m.port}`,
      started_at: 0,
      heartbeat: 0,
    },
  };
}
