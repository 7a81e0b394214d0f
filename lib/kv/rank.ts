/**
 * What a producer rank and a consumer rank share: the engine, the registered caches, the registry entry,
 * KV notifications, and running one batch per (request, peer).
 */
import { MooncakeError, isMooncakeError } from '../errors';
import { TransferEngine } from '../engine';
import { sendNotify, type Notify } from '../handshake';
import { createMetadataStore, isP2PHandshake } from '../metadata/store';
import type { Segment } from '../segment';
import type { MemoryRegion } from '../memory';
import { KvCaches, type KvCachesInput } from './caches';
import { decodeKvMessage, encodeKvMessage, type KvMessage, type KvRankRef } from './messages';
import { KvMetrics, type KvTransferPeer } from './metrics';
import type { KvRankOptions, ResolvedKvOptions } from './options';
import type { KvTransferParams } from './params';
import { failedPairs, type TransferPlan } from './plan';
import { KvRegistry, type KvPeer } from './registry';

/** Result of one batch with one peer. */
export interface BatchResult {
  peer: KvTransferPeer;
  /** Indices (into the request's block pairs) that did not arrive. */
  failed: number[];
  error?: MooncakeError;
}

/** A batch with one peer that moved nothing: every one of its `pairs` block pairs failed with `error`. */
export function failedBatch(peer: Pick<KvTransferPeer, 'engineId' | 'dpRank' | 'tpRank' | 'segment'>, pairs: number, error: MooncakeError): BatchResult {
  return {
    peer: { engineId: peer.engineId, dpRank: peer.dpRank, tpRank: peer.tpRank, segment: peer.segment, bytes: 0, ranges: 0, ok: false, error: error.code },
    failed: [...Array(pairs).keys()],
    error,
  };
}

export function asMooncakeError(err: unknown, fallback: string): MooncakeError {
  if (isMooncakeError(err)) return err;
  if (err instanceof Error && err.name === 'AbortError') return new MooncakeError('ABORT_ERR', err.message, { cause: err });
  return new MooncakeError('PROTOCOL_ERROR', `${fallback}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/** Concatenates plans for one peer into a single batch. */
export function mergePlans(plans: readonly TransferPlan[]): TransferPlan {
  if (plans.length === 1) return plans[0];
  const requests = plans.flatMap((p) => p.requests);
  const firstPair = new Uint32Array(requests.length);
  const pairCount = new Uint32Array(requests.length);
  let n = 0;
  for (const p of plans) {
    firstPair.set(p.firstPair, n);
    pairCount.set(p.pairCount, n);
    n += p.requests.length;
  }
  return {
    requests,
    firstPair,
    pairCount,
    runs: plans.flatMap((p) => p.runs),
    bytes: plans.reduce((a, p) => a + p.bytes, 0),
    wholeBlocks: plans.every((p) => p.wholeBlocks),
  };
}

export class KvRankCore {
  readonly metrics = new KvMetrics();
  readonly ref: KvRankRef;
  private readonly pendingNotifies = new Set<Promise<unknown>>();
  private readonly segmentInstances = new Map<string, string>();
  private readonly onNotify: (n: Notify) => void;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly options: ResolvedKvOptions,
    readonly engine: TransferEngine,
    private readonly ownsEngine: boolean,
    readonly caches: KvCaches,
    readonly registry: KvRegistry,
    readonly registryKey: string,
    readonly side: 'prefill' | 'decode',
    onMessage: (m: KvMessage) => void,
  ) {
    this.ref = {
      engine_id: options.engineId,
      dp_rank: options.dpRank,
      tp_rank: options.tpRank,
      tp_size: this.ownTp,
      host: engine.advertiseAddress,
      rpc_port: engine.rpcPort,
    };
    this.onNotify = (n: Notify) => {
      const { message, malformed } = decodeKvMessage(n);
      if (malformed) this.metrics.malformed++;
      if (!message) return;
      this.metrics.notifiesReceived++;
      onMessage(message);
    };
    engine.on('notify', this.onNotify);
  }

  get ownTp(): number {
    return this.side === 'decode' ? this.options.decode.tpSize : this.options.prefill.tpSize;
  }

  /** Creates the engine (unless given), registers the caches and publishes the registry entry. */
  static async open(
    o: ResolvedKvOptions,
    raw: KvRankOptions,
    side: 'prefill' | 'decode',
    onMessage: (m: KvMessage) => void,
    onWarning: (e: MooncakeError) => void,
  ): Promise<KvRankCore> {
    const own = side === 'prefill' ? o.prefill : o.decode;
    const storeUrl = o.metadataServer ?? raw.engine?.metadataServer;
    if (storeUrl === undefined || isP2PHandshake(storeUrl)) {
      throw new MooncakeError('INVALID_CONFIG', 'the KV handshake needs a metadata store: set metadataServer to e.g. http://127.0.0.1:8080/metadata (P2PHANDSHAKE has none)', {
        details: { field: 'metadataServer', value: storeUrl },
      });
    }
    const store = createMetadataStore(storeUrl);
    let engine = raw.engine;
    const ownsEngine = engine === undefined;
    let caches: KvCaches | undefined;
    try {
      if (!engine) {
        const rpcPort = o.kvPort === undefined ? undefined : o.kvPort + o.dpRank * own.tpSize + o.tpRank;
        engine = await TransferEngine.create({
          ...raw.engineOptions,
          metadataServer: storeUrl,
          ...(o.host !== undefined ? { advertiseAddress: o.host } : {}),
          ...(rpcPort !== undefined ? { rpcPort } : {}),
        });
      }
      caches = await KvCaches.register(engine, o.layout, raw.caches as KvCachesInput | undefined);
      const registry = new KvRegistry(store, {
        heartbeatMs: o.heartbeatMs,
        staleAfterMs: o.staleAfterMs,
        clusterId: o.clusterId,
        onError: onWarning,
      });
      const now = Date.now();
      const key = await registry.publish({
        version: 1,
        engine_id: o.engineId,
        role: o.role,
        dp_rank: o.dpRank,
        tp_rank: o.tpRank,
        dp_size: own.dpSize,
        tp_size: own.tpSize,
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
        started_at: now,
      });
      return new KvRankCore(o, engine, ownsEngine, caches, registry, key, side, onMessage);
    } catch (err) {
      if (ownsEngine) await engine?.close().catch(() => undefined);
      else await caches?.unregister();
      await store.close().catch(() => undefined);
      throw err;
    }
  }

  /** The data-parallel rank of the instance `params` names: remote_dp_rank, else derived from remote_port. */
  async dpRankOf(params: KvTransferParams, signal?: AbortSignal): Promise<number> {
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

  /** Opens (or reopens, after the peer restarted) the peer's segment. */
  async segment(peer: KvPeer): Promise<Segment> {
    const name = peer.entry.segment;
    const known = this.segmentInstances.get(name);
    const seg = await this.engine.openSegment(name, { refresh: known !== undefined && known !== peer.entry.instance });
    this.segmentInstances.set(name, peer.entry.instance);
    return seg;
  }

  /** Runs one batch with one peer; failures become failed pair indices, never exceptions. */
  async run(opcode: 'read' | 'write', peer: KvPeer, plan: TransferPlan, deadline: number, signal: AbortSignal | undefined): Promise<BatchResult> {
    const e = peer.entry;
    const info: KvTransferPeer = { engineId: e.engine_id, dpRank: e.dp_rank, tpRank: e.tp_rank, segment: e.segment, bytes: 0, ranges: plan.requests.length, ok: false };
    if (plan.requests.length === 0) {
      info.ok = true;
      return { peer: info, failed: [] };
    }
    try {
      const timeoutMs = Math.max(1, Math.ceil(deadline - performance.now()));
      const seg = await this.segment(peer);
      const opts = { timeoutMs, ...(signal ? { signal } : {}) };
      const r = opcode === 'read' ? await this.engine.read(seg, plan.requests, opts) : await this.engine.write(seg, plan.requests, opts);
      info.ok = true;
      info.bytes = r.bytes;
      return { peer: info, failed: [] };
    } catch (err) {
      const error = asMooncakeError(err, `${opcode} with ${e.segment} failed`);
      info.error = error.code;
      this.registry.invalidate(e.engine_id, e.dp_rank, e.tp_rank);
      const failed = failedPairs(plan, error.failures);
      // Bytes of the requests that did succeed, for the metrics.
      if (error.failures && error.failures.length === plan.requests.length) {
        for (let i = 0; i < plan.requests.length; i++) if (error.failures[i] === undefined) info.bytes += plan.requests[i].length;
      }
      return { peer: info, failed, error };
    }
  }

  private scratch: Promise<MemoryRegion> | undefined;

  /**
   * Pays the first-transfer costs ahead of time (registry lookup, segment descriptor, TCP connections):
   * reads one byte from every listed rank of `engineId` into a private 64-byte scratch region (KV blocks are
   * never touched). Ranks that do not answer are counted in `failed`.
   */
  async warmUp(engineId: string, ranks: readonly { dpRank: number; tpRank: number }[]): Promise<{ peers: number; failed: number }> {
    this.assertOpen();
    this.scratch ??= this.engine.registerMemory(Buffer.alloc(64), { remoteAccessible: false });
    const scratch = await this.scratch;
    let failed = 0;
    await Promise.all(
      ranks.map(async ({ dpRank, tpRank }) => {
        try {
          const peer = await this.registry.lookup(engineId, dpRank, tpRank);
          const seg = await this.segment(peer);
          await this.engine.read(seg, [{ local: scratch, remote: peer.tensors[0], length: 1 }], { timeoutMs: this.options.transferTimeoutMs });
        } catch {
          failed++;
        }
      }),
    );
    return { peers: ranks.length, failed };
  }

  /** Sends a KV message to a rank's handshake port (bounded, 3 tries); resolves false when it could not. */
  sendMessage(host: string, port: number, message: KvMessage): Promise<boolean> {
    const notify = encodeKvMessage(message);
    const timeout = this.options.notifyTimeoutMs;
    const p = (async () => {
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await sendNotify(host, port, notify, { connectTimeoutMs: timeout, timeoutMs: timeout });
          this.metrics.notifiesSent++;
          return true;
        } catch (err) {
          // A refused connection means the rank is gone: no point retrying.
          if (isMooncakeError(err, 'CONNECT_FAILED') && !(err.details as { timedOut?: boolean } | undefined)?.timedOut) break;
          if (attempt < 2) await new Promise((r) => setTimeout(r, 100));
        }
      }
      this.metrics.notifiesFailed++;
      return false;
    })();
    this.pendingNotifies.add(p);
    void p.finally(() => this.pendingNotifies.delete(p));
    return p;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  assertOpen(): void {
    if (this.closing) throw new MooncakeError('CLOSED', 'the KV rank is closed');
  }

  /** Waits (bounded) for notifications in flight, removes the registry entry and closes the engine if owned. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const wait = Promise.allSettled([...this.pendingNotifies]);
      await Promise.race([wait, new Promise((r) => setTimeout(r, 3 * this.options.notifyTimeoutMs + 500).unref())]);
      this.engine.off('notify', this.onNotify);
      await this.registry.close().catch(() => undefined);
      if (this.ownsEngine) await this.engine.close();
      else await this.caches.unregister();
    })();
    return this.closing;
  }
}
