/**
 * mooncake-node's own side channel: every rank publishes a registry entry in the metadata store
 * (registry.ts) and signals completion with JSON notifications on its engine's handshake port
 * (messages.ts). Ranks listen on kv_port + dp_rank × tp_size + tp_rank when kv_port is set.
 */
import { MooncakeError, isMooncakeError } from '../errors';
import type { TransferEngine, TransferEngineOptions } from '../engine';
import { NotifySession } from '../handshake';
import { createMetadataStore, isP2PHandshake } from '../metadata/store';
import type { Notify } from '../handshake';
import { decodeKvMessage, encodeKvMessage, KV_NOTIFY_NAME, type KvMessage, type KvRankRef } from './messages';
import type { KvRankOptions, ResolvedKvOptions } from './options';
import { parseKvTransferParams, type KvTransferParams } from './params';
import { KvRegistry, type KvPeer } from './registry';
import type { KvDoneResult, KvParamsExtra, KvPushSignal, KvSideChannel, KvSideChannelContext } from './side-channel';
import { InstanceKeys } from './instance-keys';
import { isLocalRank, noteLocalRank, TOKEN_PARAM } from './tokens';

/** The token of `params`, to echo in a signal about them. */
function echo(p: KvTransferParams): { token?: string } {
  const t = p[TOKEN_PARAM];
  return typeof t === 'string' ? { token: t } : {};
}

export class MooncakeNodeChannel implements KvSideChannel {
  readonly name = 'mooncake-node' as const;
  readonly tokens = true;
  private registry!: KvRegistry;
  private ctx!: KvSideChannelContext;
  private key = '';
  private ref!: KvRankRef;
  /** Ends this channel's claim of the KV notify name on its engine. */
  private unclaim: (() => void) | undefined;
  /** Forgets that this rank uses this process's key (see tokens.ts). */
  private unnote: (() => void) | undefined;
  instanceKeys: InstanceKeys | undefined;
  /** Kept-alive connections to the peers' handshake ports: a message per request costs no TCP set-up. */
  private readonly notifier = new NotifySession();

  private constructor(
    private readonly o: ResolvedKvOptions,
    private readonly storeUrl: string,
    private readonly side: 'prefill' | 'decode',
  ) {}

  /** INVALID_CONFIG without a metadata store (the registry lives there). */
  static create(o: ResolvedKvOptions, raw: KvRankOptions, side: 'prefill' | 'decode'): MooncakeNodeChannel {
    const storeUrl = o.metadataServer ?? raw.engine?.metadataServer;
    if (storeUrl === undefined || isP2PHandshake(storeUrl)) {
      throw new MooncakeError('INVALID_CONFIG', 'the KV handshake needs a metadata store: set metadataServer to e.g. http://127.0.0.1:8080/metadata (P2PHANDSHAKE has none)', {
        details: { field: 'metadataServer', value: storeUrl },
      });
    }
    return new MooncakeNodeChannel(o, storeUrl, side);
  }

  private get own(): { dpSize: number; tpSize: number } {
    return this.side === 'prefill' ? this.o.prefill : this.o.decode;
  }

  engineOptions(): Partial<TransferEngineOptions> {
    const o = this.o;
    const rpcPort = o.kvPort === undefined ? undefined : o.kvPort + o.dpRank * this.own.tpSize + o.tpRank;
    return { metadataServer: this.storeUrl, ...(rpcPort !== undefined ? { rpcPort } : {}) };
  }

  checkEngine(): void {}

  get address(): string {
    return this.key;
  }

  /** The rank's registry key. */
  get registryKey(): string {
    return this.key;
  }

  async start(ctx: KvSideChannelContext): Promise<void> {
    this.ctx = ctx;
    const { engine, caches } = ctx;
    const o = this.o;
    this.ref = { engine_id: o.engineId, dp_rank: o.dpRank, tp_rank: o.tpRank, tp_size: this.own.tpSize, host: engine.advertiseAddress, rpc_port: engine.rpcPort };
    // KV notifies are this layer's: taken off the engine's notify path (never kept for getNotifies()),
    // and refused ones fail their sender's sendNotify.
    try {
      this.unclaim = engine.claimNotifies(KV_NOTIFY_NAME, (n: Notify) => {
        const { message, failure } = decodeKvMessage(n, o.layout.numBlocks);
        if (failure === 'malformed') ctx.metrics.count('malformed');
        if (failure) ctx.onRefused({ reason: failure });
        if (!message) return false;
        ctx.metrics.count('notifiesReceived');
        return ctx.onMessage(message);
      });
    } catch (err) {
      throw new MooncakeError('INVALID_CONFIG', 'another KV rank already receives its messages through this engine: give every KV rank its own engine', { cause: err, details: { field: 'engine' } });
    }
    const store = createMetadataStore(this.storeUrl);
    this.registry = new KvRegistry(store, { heartbeatMs: o.heartbeatMs, staleAfterMs: o.staleAfterMs, clusterId: o.clusterId, onError: ctx.onWarning });
    try {
      this.key = await this.registry.publish({
        version: 1,
        engine_id: o.engineId,
        role: o.role,
        dp_rank: o.dpRank,
        tp_rank: o.tpRank,
        dp_size: this.own.dpSize,
        tp_size: this.own.tpSize,
        segment: engine.localServerName,
        host: engine.advertiseAddress,
        rpc_port: engine.rpcPort,
        kv_port: o.kvPort ?? null,
        total_kv_heads: o.totalKvHeads,
        layout: o.layout.toJSON(),
        tensors: caches.tensorAddresses.map((a) => a.toString()),
        regions: caches.regions.map((r) => ({ address: r.address.toString(), length: r.length })),
        pid: process.pid,
        instance: KvRegistry.instanceId(),
        started_at: Date.now(),
        ...(ctx.fence !== undefined ? { fence: ctx.fence.toString() } : {}),
        ...(o.holdKeyConfigured ? {} : { token_key: o.holdKey.toString('base64url') }),
      });
    } catch (err) {
      await this.close();
      throw err;
    }
    if (!o.holdKeyConfigured) this.startInstanceKeys();
  }

  /**
   * Without a configured holdKey, the other ranks of this instance sign with their process's key: note
   * this rank as one that uses this process's key, and read the others' from their entries.
   */
  private startInstanceKeys(): void {
    const o = this.o;
    const id = (tpRank: number) => `${this.storeUrl}\n${this.registry.key(o.engineId, o.dpRank, tpRank)}`;
    this.unnote = noteLocalRank(id(o.tpRank));
    this.instanceKeys = new InstanceKeys(o.tpRank, this.own.tpSize, {
      local: (tpRank) => isLocalRank(id(tpRank)),
      read: async (tpRank) => {
        const peer = await this.registry.read(o.engineId, o.dpRank, tpRank, AbortSignal.timeout(Math.max(1000, o.notifyTimeoutMs)));
        if (!peer) return undefined;
        const key = peer.entry.token_key;
        return { instance: peer.entry.instance, ...(key !== undefined ? { key: Buffer.from(key, 'base64url') } : {}) };
      },
    }, { refreshMs: o.heartbeatMs });
    this.instanceKeys.start();
  }

  transferParams(requestId: string, blockIds: readonly number[], extra: KvParamsExtra = {}): KvTransferParams {
    const o = this.o;
    const engine: TransferEngine = this.ctx.engine;
    return {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_engine_id: o.engineId,
      remote_host: engine.advertiseAddress,
      remote_port: o.kvPort !== undefined ? o.kvPort + o.dpRank * this.own.tpSize : engine.rpcPort,
      remote_block_ids: [...blockIds],
      remote_request_id: requestId,
      remote_dp_rank: o.dpRank,
      remote_tp_size: this.own.tpSize,
      remote_total_kv_heads: o.totalKvHeads,
      ...(extra.token !== undefined ? { [TOKEN_PARAM]: extra.token } : {}),
    };
  }

  parseParams(input: unknown): KvTransferParams {
    return parseKvTransferParams(input);
  }

  /** vllm-ascend's params carry remote_ptp_size / num_prompt_blocks and none of mooncake-node's additions. */
  checkParams(p: KvTransferParams): void {
    const fromAscend = p.remote_total_kv_heads === undefined && p.remote_dp_rank === undefined &&
      (p.remote_ptp_size !== undefined || p.num_prompt_blocks !== undefined || p.remote_multi_nodes_meta_mapping !== undefined || p.remote_cached_tokens !== undefined);
    if (fromAscend) {
      throw new MooncakeError('INVALID_CONFIG', `kv_transfer_params of ${p.remote_request_id} come from a vllm-ascend MooncakeConnector (remote_ptp_size, no remote_total_kv_heads); this rank speaks mooncake-node's side channel: create it with sideChannel 'vllm-ascend'`, {
        details: { field: 'sideChannel', expected: 'vllm-ascend' },
      });
    }
  }

  async lookup(p: KvTransferParams, tpRank: number, signal?: AbortSignal): Promise<KvPeer> {
    const dp = await this.dpRankOf(p, signal);
    return this.registry.lookup(p.remote_engine_id, dp, tpRank, { signal });
  }

  lookupRank(engineId: string, dpRank: number, tpRank: number): Promise<KvPeer> {
    return this.registry.lookup(engineId, dpRank, tpRank);
  }

  /** The data-parallel rank of the instance `params` names: remote_dp_rank, else derived from remote_port. */
  private async dpRankOf(params: KvTransferParams, signal?: AbortSignal): Promise<number> {
    if (params.remote_dp_rank !== undefined) return params.remote_dp_rank;
    const first = await this.registry.lookup(params.remote_engine_id, 0, 0, { signal });
    const base = first.entry.kv_port;
    const diff = base === null ? NaN : params.remote_port - base;
    if (!Number.isSafeInteger(diff) || diff < 0 || diff % first.entry.tp_size !== 0 || diff / first.entry.tp_size >= first.entry.dp_size) {
      throw new MooncakeError('INVALID_ARGUMENT', `kv_transfer_params has no remote_dp_rank and remote_port ${params.remote_port} is not kv_port + dp_rank × tp_size of engine ${params.remote_engine_id}`, {
        details: { field: 'kv_transfer_params.remote_port' },
      });
    }
    return diff / first.entry.tp_size;
  }

  invalidate(peer: KvPeer): void {
    const e = peer.entry;
    this.registry.invalidate(e.engine_id, e.dp_rank, e.tp_rank);
  }

  sendDone(p: KvTransferParams, _tpRank: number, peer: KvPeer | undefined, result: KvDoneResult): Promise<boolean> {
    if (!peer) return Promise.resolve(false); // no registry entry: nowhere to send it
    return this.send(peer.entry.host, peer.entry.rpc_port, {
      type: 'done',
      request_id: p.remote_request_id,
      from: this.ref,
      ok: result.ok,
      failed_block_ids: result.failedBlockIds,
      ...echo(p),
    });
  }

  /**
   * `signal.token` is the token of the consumer's params (KvProducer.push sets it). A failed push's `error`
   * (for channels whose answer carries a reason, vLLM's) is not sent: a KV message has no field for it, and
   * its length would count against the receiver's message limit.
   */
  sendPush(peer: KvPeer, signal: KvPushSignal): Promise<boolean> {
    const { error: _reason, ...s } = signal as KvPushSignal & { error?: string };
    return this.send(peer.entry.host, peer.entry.rpc_port, { ...s, from: this.ref } as KvMessage);
  }

  /** Sends a KV message to a rank's handshake port (bounded, 3 tries); resolves false when it could not. */
  private async send(host: string, port: number, message: KvMessage): Promise<boolean> {
    const notify = encodeKvMessage(message);
    const timeout = this.o.notifyTimeoutMs;
    const metrics = this.ctx.metrics;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.notifier.send(host, port, notify, { connectTimeoutMs: timeout, timeoutMs: timeout });
        metrics.count('notifiesSent');
        return true;
      } catch (err) {
        // A refused connection means the rank is gone, and a refused message would be refused again.
        if (isMooncakeError(err, 'CONNECT_FAILED') && !(err.details as { timedOut?: boolean } | undefined)?.timedOut) break;
        if (isMooncakeError(err, 'REJECT_HANDSHAKE')) {
          this.ctx.onWarning(new MooncakeError('REMOTE_REJECTED', `${host}:${port} refused the KV "${message.type}" for ${message.request_id} (its 'refused' event says why: a token, rank or size it does not accept, or a full early-message buffer)`, { cause: err }));
          break;
        }
        if (attempt < 2) await new Promise((r) => setTimeout(r, 100));
      }
    }
    metrics.count('notifiesFailed');
    return false;
  }

  async close(): Promise<void> {
    this.unclaim?.();
    this.unclaim = undefined;
    this.instanceKeys?.close();
    this.unnote?.();
    this.notifier.close();
    await this.registry?.close().catch(() => undefined);
  }
}
