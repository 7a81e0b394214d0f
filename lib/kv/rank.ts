/**
 * What a producer rank and a consumer rank share: the engine, the registered caches, the side channel
 * (discovery and completion signals, side-channel.ts), and running one batch per (request, peer).
 */
import { MooncakeError, isMooncakeError } from '../errors';
import { TransferEngine, type TransferEngineOptions } from '../engine';
import type { Segment } from '../engine/segment';
import type { MemoryRegion } from '../engine/memory';
import { KvCaches, type KvCachesInput } from './caches';
import type { KvMessage } from './messages';
import { KvMetrics, type KvRefusal, type KvTransferPeer } from './metrics';
import type { KvRankOptions, ResolvedKvOptions } from './options';
import { failedPairs, makePlan, type TransferPlan } from './plan';
import type { KvPeer } from './registry';
import { createSideChannel } from './channels';
import { failureStage, type KvFailureStage } from './ledger';
import { distinctSorted, FenceReader, HoldFence, staleError, stalePairs } from './fence';
import type { KvSideChannel } from './side-channel';

/** Result of one batch with one peer. */
export interface BatchResult {
  peer: KvTransferPeer;
  /** Indices (into the request's block pairs) that did not arrive. */
  failed: number[];
  error?: MooncakeError;
  /** Where it failed (the failure ledger's stage), when it did. */
  stage?: KvFailureStage;
}

/**
 * A batch with one peer that moved nothing: every one of its `pairs` block pairs failed with `error`, at
 * `stage` (default: finding the peer, or its timeout).
 */
export function failedBatch(peer: Pick<KvTransferPeer, 'engineId' | 'dpRank' | 'tpRank' | 'segment'>, pairs: number, error: MooncakeError, stage?: KvFailureStage): BatchResult {
  return {
    peer: { engineId: peer.engineId, dpRank: peer.dpRank, tpRank: peer.tpRank, segment: peer.segment, bytes: 0, ranges: 0, ok: false, error: error.code },
    failed: [...Array(pairs).keys()],
    error,
    stage: stage ?? failureStage(error, 'lookup', 'local'),
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
  const total = plans.reduce((a, p) => a + p.lengths.length, 0);
  const locals = new BigUint64Array(total);
  const remotes = new BigUint64Array(total);
  const lengths = new Float64Array(total);
  const firstPair = new Uint32Array(total);
  const pairCount = new Uint32Array(total);
  let n = 0;
  for (const p of plans) {
    locals.set(p.locals, n);
    remotes.set(p.remotes, n);
    lengths.set(p.lengths, n);
    firstPair.set(p.firstPair, n);
    pairCount.set(p.pairCount, n);
    n += p.lengths.length;
  }
  return makePlan(
    locals,
    remotes,
    lengths,
    firstPair,
    pairCount,
    plans.flatMap((p) => p.runs),
    plans.reduce((a, p) => a + p.bytes, 0),
    plans.every((p) => p.wholeBlocks),
  );
}

export class KvRankCore {
  readonly metrics = new KvMetrics();
  private readonly pending = new Set<Promise<unknown>>();
  private readonly segmentInstances = new Map<string, string>();
  private closing: Promise<void> | undefined;
  private fenceReader: FenceReader | undefined;

  private constructor(
    readonly options: ResolvedKvOptions,
    readonly engine: TransferEngine,
    private readonly ownsEngine: boolean,
    readonly caches: KvCaches,
    /** Discovery, metadata exchange and completion signalling (side-channel.ts). */
    readonly channel: KvSideChannel,
    readonly side: 'prefill' | 'decode',
    /** Producer: the per-block hold counters peers read around their pulls (fence.ts). */
    readonly fence: HoldFence | undefined,
  ) {}

  get ownTp(): number {
    return this.side === 'decode' ? this.options.decode.tpSize : this.options.prefill.tpSize;
  }

  /** Creates the engine (unless given), registers the caches and starts the side channel. */
  static async open(
    o: ResolvedKvOptions,
    raw: KvRankOptions,
    side: 'prefill' | 'decode',
    onMessage: (m: KvMessage) => boolean,
    onWarning: (e: MooncakeError) => void,
    onRefused: (r: KvRefusal) => void,
  ): Promise<KvRankCore> {
    const channel = createSideChannel(o, raw, side);
    let engine = raw.engine;
    const ownsEngine = engine === undefined;
    let caches: KvCaches | undefined;
    let fence: HoldFence | undefined;
    let core: KvRankCore | undefined;
    try {
      if (engine) channel.checkEngine(engine);
      else {
        engine = await TransferEngine.create({
          ...raw.engineOptions,
          ...channel.engineOptions(),
          ...(o.host !== undefined ? { advertiseAddress: o.host } : {}),
        } as TransferEngineOptions);
      }
      caches = await KvCaches.register(engine, o.layout, raw.caches as KvCachesInput | undefined);
      // A producer that only writes when the decode asks (vLLM's side channel: no hold()) has nothing to fence.
      if (side === 'prefill' && channel.awaitRequest === undefined) fence = await HoldFence.create(engine, o.layout.numBlocks);
      core = new KvRankCore(o, engine, ownsEngine, caches, channel, side, fence);
      await channel.start({ options: o, raw, side, engine, caches, fence: fence?.address, metrics: core.metrics, onMessage, onWarning, onRefused });
      return core;
    } catch (err) {
      await channel.close().catch(() => undefined);
      if (ownsEngine) await engine?.close().catch(() => undefined);
      else {
        await caches?.unregister();
        await fence?.close();
      }
      throw err;
    }
  }

  /** Opens (or reopens, after the peer restarted) the peer's segment. */
  async segment(peer: KvPeer): Promise<Segment> {
    const name = peer.entry.segment;
    const known = this.segmentInstances.get(name);
    const seg = await this.engine.openSegment(name, { refresh: known !== undefined && known !== peer.entry.instance });
    this.segmentInstances.set(name, peer.entry.instance);
    return seg;
  }

  /**
   * Runs one batch with one peer; failures become failed pair indices, never exceptions. A read with
   * `fenced` (pair i reads the peer's block `fenced.blocks[i]`) from a peer that publishes a hold fence is
   * checked against it (fence.ts): pairs whose block was not held for the whole read fail with STALE_KV.
   */
  async run(opcode: 'read' | 'write', peer: KvPeer, plan: TransferPlan, deadline: number, signal: AbortSignal | undefined, fenced?: { requestId: string; blocks: readonly number[] }): Promise<BatchResult> {
    const e = peer.entry;
    const n = plan.lengths.length;
    const info: KvTransferPeer = { engineId: e.engine_id, dpRank: e.dp_rank, tpRank: e.tp_rank, segment: e.segment, bytes: 0, ranges: n, ok: false };
    if (n === 0) {
      info.ok = true;
      return { peer: info, failed: [] };
    }
    const fence = opcode === 'read' && fenced !== undefined ? peer.fence : undefined;
    const pairs = fenced?.blocks ?? [];
    const blocks = fence !== undefined ? distinctSorted(pairs) : [];
    const opts = () => ({ timeoutMs: Math.max(1, Math.ceil(deadline - performance.now())), ...(signal ? { signal } : {}) });
    let phase: 'fence' | 'data' = 'fence';
    try {
      const seg = await this.segment(peer);
      // The first fence read completes before the data read starts, the second starts after it completed.
      const before = fence !== undefined ? await this.fences.read(seg, fence, blocks, opts()) : undefined;
      phase = 'data';
      const r = await this.engine.transferRanges(seg, opcode, plan, opts());
      info.bytes = r.bytes;
      phase = 'fence';
      if (before) {
        const after = await this.fences.read(seg, fence!, blocks, opts());
        const stale = stalePairs(pairs, blocks, before, after);
        if (stale.length > 0) {
          info.error = 'STALE_KV';
          this.metrics.count('staleBlocks', stale.length);
          return { peer: info, failed: stale, error: staleError(fenced!.requestId, e.segment, stale.length, pairs.length), stage: 'RECV' };
        }
      }
      info.ok = true;
      return { peer: info, failed: [] };
    } catch (err) {
      const error = asMooncakeError(err, `${opcode} with ${e.segment} failed`);
      info.error = error.code;
      this.channel.invalidate(peer);
      // Per-request failures map to pairs only for the data batch; a failed fence read fails every pair.
      const failures = phase === 'data' ? error.failures : undefined;
      const failed = failedPairs(plan, failures);
      // Bytes of the requests that did succeed, for the metrics.
      if (failures && failures.length === n) {
        for (let i = 0; i < n; i++) if (failures[i] === undefined) info.bytes += plan.lengths[i];
      }
      return { peer: info, failed, error, stage: failureStage(error, 'transfer', opcode === 'write' ? 'local' : 'remote') };
    }
  }

  /** Reads peers' hold fences (consumer). */
  private get fences(): FenceReader {
    this.fenceReader ??= new FenceReader(this.engine);
    return this.fenceReader;
  }

  private scratch: Promise<MemoryRegion> | undefined;

  /**
   * Pays the first-transfer costs ahead of time (registry lookup, segment descriptor, TCP connections):
   * reads one byte from every listed rank of `engineId` into a private 64-byte scratch region (KV blocks are
   * never touched). Ranks that do not answer are counted in `failed`.
   */
  async warmUp(engineId: string, ranks: readonly { dpRank: number; tpRank: number }[]): Promise<{ peers: number; failed: number }> {
    this.assertOpen();
    const lookupRank = this.channel.lookupRank?.bind(this.channel);
    if (!lookupRank) {
      throw new MooncakeError('NOT_IMPLEMENTED', `warmUp addresses peer ranks by engine id, which the ${this.channel.name} side channel cannot: the first transfer connects instead`);
    }
    this.scratch ??= this.engine.registerMemory(Buffer.alloc(64), { remoteAccessible: false });
    const scratch = await this.scratch;
    let failed = 0;
    await Promise.all(
      ranks.map(async ({ dpRank, tpRank }) => {
        try {
          const peer = await lookupRank(engineId, dpRank, tpRank);
          const seg = await this.segment(peer);
          await this.engine.read(seg, [{ local: scratch, remote: peer.tensors[0], length: 1 }], { timeoutMs: this.options.transferTimeoutMs });
        } catch {
          failed++;
        }
      }),
    );
    return { peers: ranks.length, failed };
  }

  /** Keeps `p` (a signal being sent) for close() to wait for, bounded. */
  track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p)).catch(() => undefined);
    return p;
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  assertOpen(): void {
    if (this.closing) throw new MooncakeError('CLOSED', 'the KV rank is closed');
  }

  /** Waits (bounded) for signals in flight, closes the side channel and the engine if owned. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const wait = Promise.allSettled([...this.pending]);
      await Promise.race([wait, new Promise((r) => setTimeout(r, 3 * this.options.notifyTimeoutMs + 500).unref())]);
      await this.channel.close().catch(() => undefined);
      if (this.ownsEngine) await this.engine.close();
      else {
        await this.caches.unregister();
        await this.fence?.close();
        await this.fenceReader?.close();
      }
    })();
    return this.closing;
  }
}
