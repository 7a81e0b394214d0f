/**
 * KvProducer: one prefill rank.
 *
 * Pull (vllm-ascend's MooncakeConnector): after prefill, `hold(requestId, blockIds)` keeps the blocks and
 * returns the `kv_transfer_params` for the proxy. Decode ranks read the blocks and each sends "done"; when
 * every decode rank that reads from this rank is done (rank mapping), the hold is released with reason
 * 'done' and the caller frees the blocks. Without "done" the blocks are force-freed after `abortTimeoutMs`
 * (reason 'abort-timeout'). A rank the mapping does not choose is released at once ('not-selected').
 *
 * Push (layerwise / SGLang flow): `push(params, blockIds)` writes this rank's head slices into the blocks the
 * decode instance assigned (its `kv_transfer_params`), then notifies each decode rank. With vLLM's
 * MooncakeConnector (side channel 'vllm') the params only carry the transfer id: the push waits for each decode
 * rank's transfer request, which names its blocks, and answers it.
 *
 * Every failure leaves a failure-ledger record (ledger.ts): on the push's outcome, as a 'failure' event, and
 * in takeFailures().
 */
import { MooncakeError } from '../errors';
import { batchOutcome, checkBlockIds, checkRequestId, KvRankBase, MEMORY } from './rank-base';
import { asMooncakeError, type BatchResult } from './rank';
import type { KvMessage } from './messages';
import type { KvMetricsSnapshot, KvRefusal, KvRefusalReason, KvReleaseReason, KvTransferOutcome } from './metrics';
import type { KvRankOptions } from './options';
import { checkDistinct, type KvTransferParams, type KvTransferParamsWire } from './params';
import { PushRun, pushPlan, type PushContext } from './push';
import { slicesByRank, targetsForPrefillRank } from './rank-map';
import type { TransferPlan } from './plan';
import type { Segment } from '../engine/segment';
import type { KvRankEntry } from './registry';
import type { KvParamsExtra } from './side-channel';
import { ANY_RANK } from './messages';
import type { KvFailureRecord, KvFailureStage } from './ledger';

/** What a consumer rank reported in its "done". */
export interface KvConsumerReport {
  engineId: string;
  dpRank: number;
  tpRank: number;
  ok: boolean;
  /** This producer's block ids the consumer did not get. */
  failedBlockIds: number[];
}

/** A producer let go of a request's blocks: free them now. */
export interface KvRelease {
  requestId: string;
  blockIds: number[];
  reason: KvReleaseReason;
  heldMs: number;
  consumers: KvConsumerReport[];
}

export interface KvHold {
  requestId: string;
  /** For the proxy to hand to the decode instance. */
  params: KvTransferParamsWire;
  /** Settles when the blocks may be freed (also the 'released' event). */
  released: Promise<KvRelease>;
}

export interface KvProducerEvents {
  released: [release: KvRelease];
  /** A push finished (successfully or not). */
  transfer: [outcome: KvTransferOutcome];
  /** Something went wrong in the background (heartbeat, unexpected notification). */
  warning: [error: MooncakeError];
  /** A failure-ledger record: a push failed (also on its outcome), a signal was lost, a hold timed out. */
  failure: [record: KvFailureRecord];
  /** A "done" (or another KV message) was refused and did not release anything (see KvRefusalReason). */
  refused: [refusal: KvRefusal];
}

type Done = Extract<KvMessage, { type: 'done' }>;

interface HoldState {
  requestId: string;
  blockIds: number[];
  blockSet: Set<number>;
  started: number;
  pending: Set<number>;
  reports: KvConsumerReport[];
  timer: NodeJS.Timeout | undefined;
  resolve: (r: KvRelease) => void;
}

export interface KvHoldOptions extends KvParamsExtra {
  /** Force-free after this long without "done" (default options.abortTimeoutMs). */
  abortTimeoutMs?: number;
}

/** A layerwise push under way (KvProducer.pushLayerwise). */
export interface KvLayerwisePush {
  requestId: string;
  /** Layers to push (the layout's). */
  layers: number;
  /** Layer `layer`'s KV is computed: write it now (each layer once, in any order). */
  layerReady(layer: number): void;
  /** The outcome, once every layer was written and each decode rank was told (or on timeout/abort). */
  done: Promise<KvTransferOutcome>;
}

/** A push whose arguments passed the synchronous checks (KvProducer.startPush). */
interface PushStart {
  requestId: string;
  start: number;
  deadline: number;
  ready: Promise<StartedPush>;
}

/** A push that knows its blocks: its run, or why it could not start (`setup`; the run is then empty). */
interface StartedPush {
  params: KvTransferParams;
  /** This rank's blocks paired with the decode's (all of them when the set-up failed). */
  local: number[];
  push: PushRun;
  setup?: { error: MooncakeError; stage: KvFailureStage };
}

export interface KvPushOptions {
  /** Transfer timeout for this push (default options.transferTimeoutMs). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class KvProducer extends KvRankBase<KvProducerEvents> {
  private readonly holds = new Map<string, HoldState>();
  private readonly recentlyReleased = new Map<string, number>();

  protected readonly side = 'prefill';
  protected readonly signals = ['done'] as const;

  private constructor() {
    super();
  }

  /** Creates the rank: engine, caches registered once, registry entry published. */
  static async create(options: KvRankOptions): Promise<KvProducer> {
    const p = new KvProducer();
    await p.open(options);
    return p;
  }

  /**
   * Keeps a request's blocks for the decode ranks to read (pull). Call it on every TP rank of the instance
   * with the same request id and block ids. Throws INVALID_ARGUMENT for bad ids or a request already held.
   */
  hold(requestId: string, blockIds: readonly number[], options: KvHoldOptions = {}): KvHold {
    this.core.assertOpen();
    if (this.core.channel.awaitRequest) {
      throw new MooncakeError('INVALID_CONFIG', `the ${this.core.channel.name} side channel writes when the decode asks: call push(params, blockIds) with the prefill's kv_transfer_params`, { details: { field: 'sideChannel' } });
    }
    checkRequestId(requestId);
    const ids = checkBlockIds(this.layout, blockIds);
    if (this.holds.has(requestId)) throw new MooncakeError('INVALID_ARGUMENT', `request ${requestId} is already held`);
    const abortMs = options.abortTimeoutMs ?? this.core.options.abortTimeoutMs;
    if (!Number.isSafeInteger(abortMs) || abortMs <= 0) throw new MooncakeError('INVALID_ARGUMENT', `abortTimeoutMs must be a positive integer, got ${String(abortMs)}`);
    const consumers = this.consumersOf(requestId);
    let resolve!: (r: KvRelease) => void;
    const released = new Promise<KvRelease>((r) => (resolve = r));
    const state: HoldState = { requestId, blockIds: ids, blockSet: new Set(ids), started: performance.now(), pending: consumers, reports: [], timer: undefined, resolve };
    this.holds.set(requestId, state);
    this.recentlyReleased.delete(requestId);
    // Counters odd before the params exist: a consumer that reads these blocks finds them held.
    this.core.fence?.acquire(ids);
    if (consumers.size === 0) {
      setImmediate(() => this.finish(state, 'not-selected'));
    } else {
      state.timer = setTimeout(() => this.finish(state, 'abort-timeout'), abortMs);
      state.timer.unref();
      for (const m of this.early.take(requestId)) this.onDone(state, m as Done);
    }
    return { requestId, params: this.transferParams(requestId, ids, { promptTokens: options.promptTokens, lastTokenId: options.lastTokenId }), released };
  }

  /** Lets go of a held request now (e.g. the proxy aborted it). False when it was not held. */
  release(requestId: string): boolean {
    const s = this.holds.get(requestId);
    if (!s) return false;
    this.finish(s, 'released');
    return true;
  }

  /**
   * Push mode: connects ahead of the first push to the decode instance `engineId` (every rank of its dp
   * groups, default all, that this rank may write to). Reads one byte from each into a private scratch
   * region; KV blocks are never touched. Resolves with how many peers failed.
   */
  warmUp(engineId: string, options: { dpRanks?: readonly number[] } = {}): Promise<{ peers: number; failed: number }> {
    return this.warmUpRanks(engineId, options.dpRanks, [...Array(this.core.options.decode.tpSize).keys()]);
  }

  /** Requests held now. */
  heldRequests(): { requestId: string; blockIds: number[]; heldMs: number; waitingFor: number[] }[] {
    const now = performance.now();
    return [...this.holds.values()].map((s) => ({ requestId: s.requestId, blockIds: [...s.blockIds], heldMs: now - s.started, waitingFor: [...s.pending] }));
  }

  /**
   * Push mode: writes this rank's part of a request into the blocks a decode instance assigned (`params`
   * comes from the decode side and names it), then notifies each decode rank. Resolves with the outcome;
   * failed blocks are listed, never reported as success. `blockIds` are this rank's blocks of the prompt
   * (tail-aligned with the decode's when it has fewer).
   */
  async push(params: KvTransferParams | KvTransferParamsWire | Record<string, unknown>, blockIds: readonly number[], options: KvPushOptions = {}): Promise<KvTransferOutcome> {
    const started = this.startPush(params, blockIds, options);
    const run = await started.ready;
    if (!run.setup) await run.push.writeAll();
    return this.pushOutcome(started, run, run.setup ? [] : await run.push.finish());
  }

  /**
   * Push mode, layer by layer as prefill computes them (vllm-ascend's MooncakeLayerwiseConnector flow): call
   * `layerReady(l)` once per layer as soon as layer l's KV is in the caches; its tensors are written to
   * every decode rank at once, overlapping the transfer with the remaining layers' compute. `done` settles
   * after the last layer's writes and `push_done`, with the outcome; layers not ready by the timeout fail
   * every block (a block needs all its layers). Arguments are checked as `push` checks them.
   */
  pushLayerwise(params: KvTransferParams | KvTransferParamsWire | Record<string, unknown>, blockIds: readonly number[], options: KvPushOptions = {}): KvLayerwisePush {
    const started = this.startPush(params, blockIds, options);
    const layers = this.layout.numLayers;
    const seen = new Uint8Array(layers);
    let given = 0;
    let finishing = false;
    let run: StartedPush | undefined;
    let resolve!: (o: KvTransferOutcome) => void;
    const done = new Promise<KvTransferOutcome>((r) => (resolve = r));
    // Layers ready before the push has started (lookups, a vLLM transfer request) are written once it has.
    void started.ready.then((r) => {
      run = r;
      if (!r.setup) for (let l = 0; l < layers; l++) if (seen[l]) void r.push.writeLayer(l);
    });
    const finish = (missing?: MooncakeError): void => {
      if (finishing) return;
      finishing = true;
      clearTimeout(timer);
      void started.ready.then(async (r) => resolve(await this.pushOutcome(started, r, r.setup ? [] : await r.push.finish(missing))));
    };
    const timeoutMs = Math.max(1, Math.ceil(started.deadline - performance.now()));
    const timer = setTimeout(() => finish(new MooncakeError('TIMEOUT', `layers of ${started.requestId} not ready within ${timeoutMs} ms (${given} of ${layers})`)), timeoutMs);
    const onAbort = (): void => finish(new MooncakeError('ABORT_ERR', `layerwise push of ${started.requestId} aborted`, { cause: options.signal?.reason }));
    if (options.signal) {
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener('abort', onAbort, { once: true });
      void done.then(() => options.signal?.removeEventListener('abort', onAbort));
    }
    void started.ready.then((r) => r.setup && finish());
    return {
      requestId: started.requestId,
      layers,
      done,
      layerReady: (layer: number) => {
        if (!Number.isSafeInteger(layer) || layer < 0 || layer >= layers) throw new MooncakeError('INVALID_ARGUMENT', `layer ${String(layer)} is outside [0, ${layers})`);
        if (seen[layer]) throw new MooncakeError('INVALID_ARGUMENT', `layer ${layer} of ${started.requestId} was already pushed`);
        if (finishing) return;
        seen[layer] = 1;
        given++;
        if (run && !run.setup) void run.push.writeLayer(layer);
        if (given === layers) finish();
      },
    };
  }

  /**
   * Checks a push's arguments (INVALID_ARGUMENT throws) and starts it. `ready` settles once the push knows
   * its blocks (with vLLM's side channel, when the decode's transfer request came) and has started its
   * lookups and push_start; it never rejects: a failed set-up is its `setup`.
   */
  private startPush(params: unknown, blockIds: readonly number[], options: KvPushOptions): PushStart {
    this.core.assertOpen();
    const channel = this.core.channel;
    const first = channel.parseParams(params);
    const local = checkBlockIds(this.layout, blockIds);
    if (!channel.awaitRequest) this.checkRemoteBlocks(first, local);
    const start = performance.now();
    const timeoutMs = options.timeoutMs ?? this.core.options.transferTimeoutMs;
    this.core.metrics.count('started');
    const ctx = this.pushContext();
    const ready = (async (): Promise<StartedPush> => {
      let p = first;
      let deadline = start + timeoutMs;
      let stage: KvFailureStage = 'BOOTSTRAP';
      try {
        if (channel.awaitRequest) {
          // vLLM: the decode names its blocks in its transfer request; the transfer timeout runs from there.
          p = await channel.awaitRequest(p, options.signal);
          deadline = performance.now() + timeoutMs;
          stage = 'REGISTRATION';
          this.checkRemoteBlocks(p, local);
        }
        stage = 'REGISTRATION';
        this.checkParamsShape(p);
      } catch (err) {
        const error = asMooncakeError(err, 'push failed');
        const setup = { error, stage: error.code === 'ABORT_ERR' ? 'ABORT' : error.code === 'TIMEOUT' ? 'BOOTSTRAP' : stage } as const;
        // A push whose params are refused contacts nobody: an empty run.
        return { params: p, local, setup, push: new PushRun(ctx, p, local, deadline, options.signal, true) };
      }
      const paired = local.slice(local.length - p.remote_block_ids.length);
      return { params: p, local: paired, push: new PushRun(ctx, p, paired, deadline, options.signal) };
    })();
    return { requestId: first.remote_request_id, start, deadline: start + timeoutMs, ready };
  }

  /**
   * INVALID_ARGUMENT when the decode assigned a block twice (checkDistinct) or more blocks than this rank has
   * for the request.
   */
  private checkRemoteBlocks(p: KvTransferParams, local: readonly number[]): void {
    checkDistinct(p.remote_block_ids, 'kv_transfer_params.remote_block_ids');
    if (p.remote_block_ids.length > local.length) {
      throw new MooncakeError('INVALID_ARGUMENT', `the decode assigned ${p.remote_block_ids.length} blocks but this rank has ${local.length}`);
    }
  }

  /**
   * The batches `push(params, blockIds)` would run (one per decode rank; with `layer`, that layer's), planned
   * but not run: a benchmark times the engine alone on exactly these ranges.
   * @internal
   */
  async plannedBatches(params: KvTransferParams | KvTransferParamsWire | Record<string, unknown>, blockIds: readonly number[], layer?: number): Promise<{ segment: Segment; plan: TransferPlan }[]> {
    const p = this.core.channel.parseParams(params);
    const local = checkBlockIds(this.layout, blockIds);
    const paired = local.slice(local.length - p.remote_block_ids.length);
    const ctx = this.pushContext();
    const targets = slicesByRank(targetsForPrefillRank(p.remote_request_id, this.core.options.mapping, this.tpRank), 'decodeRank');
    return Promise.all(
      [...targets].map(async ([decodeRank, slices]) => {
        const peer = await this.core.channel.lookup(p, decodeRank);
        return { segment: await this.core.segment(peer), plan: pushPlan(ctx, peer, slices, paired, p.remote_block_ids, layer) };
      }),
    );
  }

  private pushContext(): PushContext {
    return {
      core: this.core,
      layout: this.layout,
      tpRank: this.tpRank,
      shapeError: (e: KvRankEntry, name: string) => this.peerShapeError(e, name),
      undelivered: (requestId, peer) => {
        const error = new MooncakeError('CONNECTION_LOST', `push_done for ${requestId} did not reach decode rank ${peer.engineId}/${peer.dpRank}/${peer.tpRank}`);
        this.recordFailure(requestId, 'NOTIFY', error, [], peer);
      },
    };
  }

  private async pushOutcome(started: PushStart, run: StartedPush, results: BatchResult[]): Promise<KvTransferOutcome> {
    const { outcome } = batchOutcome(this.failureSource, started.requestId, 'push', 'write', run.local, results, run.setup, started.start);
    await this.core.channel.pushSettled?.(run.params, outcome).catch(() => undefined);
    this.core.metrics.record(outcome);
    this.recordFailures(outcome.failures);
    this.emit('transfer', outcome);
    return outcome;
  }

  /** The decode ranks the rank mapping pairs with this rank for a request. */
  private consumersOf(requestId: string): Set<number> {
    return new Set(targetsForPrefillRank(requestId, this.core.options.mapping, this.tpRank).map((s) => s.decodeRank));
  }

  /**
   * A "done" releases only what it names: it must echo the request token of the params it is about, come
   * from a decode rank the mapping pairs with this rank, with the configured tp size, and name only the
   * request's blocks. A "done" for a request not held yet is checked as far as it can be and kept
   * (bounded) until hold() or its time runs out.
   */
  protected onMessage(m: KvMessage): boolean {
    if (m.type !== 'done') return this.refuse(m, 'not-a-peer');
    const why = this.checkDone(m);
    if (why) return this.refuse(m, why);
    const s = this.holds.get(m.request_id);
    if (s) return this.onDone(s, m);
    if (this.recentlyReleased.has(m.request_id)) {
      this.core.metrics.count('lateDone');
      return true;
    }
    // "done" before hold(): the decode read faster than this rank called hold(). Keep it for a while.
    return this.early.keep(m.request_id, m) || this.refuse(m, 'early-full');
  }

  private checkDone(m: Done): KvRefusalReason | undefined {
    if (!this.tokenOk(m)) {
      if (this.holds.has(m.request_id)) {
        this.warn(new MooncakeError('INVALID_ARGUMENT', `"done" for held request ${m.request_id} from ${m.from.engine_id}/${m.from.dp_rank}/${m.from.tp_rank} (${m.from.host}) has the wrong request token: refused. Every rank of an instance must set the same holdKey (or MC_KV_HOLD_KEY), or none`));
      }
      return 'bad-token';
    }
    // A channel whose "done" names no rank (vllm-ascend's) has nothing more to check: one done frees, as upstream.
    if (m.from.tp_rank === ANY_RANK) return undefined;
    if (m.from.tp_size !== this.core.options.decode.tpSize) {
      this.warn(new MooncakeError('INVALID_CONFIG', `"done" for ${m.request_id} from a decode rank with tp_size ${m.from.tp_size}; this producer expects ${this.core.options.decode.tpSize}: refused`));
      return 'wrong-tp-size';
    }
    if (!this.consumersOf(m.request_id).has(m.from.tp_rank)) return 'not-a-peer';
    return undefined;
  }

  private onDone(s: HoldState, m: Done): boolean {
    if (!m.failed_block_ids.every((b) => s.blockSet.has(b))) return this.refuse(m, 'bad-block-ids');
    if (m.from.tp_rank === ANY_RANK) {
      s.pending.clear();
    } else if (!s.pending.delete(m.from.tp_rank)) {
      return true; // a repeated "done" (a retry): already counted
    }
    if (!m.ok) {
      // Recorded once per decode rank (a repeated "done" returned above), and only for a "done" that passed
      // checkDone: a refused one never reaches the ledger.
      const failed = m.failed_block_ids.length > 0 ? m.failed_block_ids : s.blockIds;
      const peer = { engineId: m.from.engine_id, dpRank: m.from.dp_rank, tpRank: m.from.tp_rank };
      this.recordFailure(m.request_id, 'RECV', new MooncakeError('REMOTE_REJECTED', `decode rank ${peer.engineId}/${peer.dpRank}/${peer.tpRank} did not get ${failed.length} blocks of ${m.request_id}`), failed, peer);
    }
    s.reports.push({ engineId: m.from.engine_id, dpRank: m.from.dp_rank, tpRank: m.from.tp_rank, ok: m.ok, failedBlockIds: m.failed_block_ids });
    if (s.pending.size === 0) this.finish(s, 'done');
    return true;
  }

  private finish(s: HoldState, reason: KvReleaseReason): void {
    if (this.holds.get(s.requestId) !== s) return;
    this.holds.delete(s.requestId);
    if (s.timer) clearTimeout(s.timer);
    // Counters even before anyone hears of the release (and may reuse the blocks): a read still in flight
    // now finds its blocks released (STALE_KV) when it checks after reading.
    this.core.fence?.release(s.blockIds);
    this.recentlyReleased.set(s.requestId, performance.now());
    if (this.recentlyReleased.size > MEMORY) {
      const oldest = this.recentlyReleased.keys().next().value;
      if (oldest !== undefined) this.recentlyReleased.delete(oldest);
    }
    this.core.metrics.release(reason);
    if (reason === 'abort-timeout') {
      this.recordFailure(s.requestId, 'TIMEOUT', new MooncakeError('TIMEOUT', `no decode rank said "done" for ${s.requestId} within abortTimeoutMs: its blocks are freed`), s.blockIds);
    }
    const r: KvRelease = { requestId: s.requestId, blockIds: s.blockIds, reason, heldMs: performance.now() - s.started, consumers: s.reports };
    s.resolve(r);
    this.emit('released', r);
  }

  metrics(): KvMetricsSnapshot {
    const m = this.core.metrics;
    return { ...this.snapshot(), holds: { active: this.holds.size, released: { ...m.released }, lateDone: m.lateDone } };
  }

  /** Releases every hold (reason 'closed'), removes the registry entry and closes the engine it created. */
  async close(): Promise<void> {
    for (const s of [...this.holds.values()]) this.finish(s, 'closed');
    await this.core.close();
  }
}
