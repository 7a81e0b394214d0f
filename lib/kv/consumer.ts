/**
 * KvConsumer: one decode rank.
 *
 * Pull (vllm-ascend's MooncakeConnector): `pull(params, blockIds)` reads this rank's heads of the request's
 * blocks from the prefill rank(s) the rank mapping names (one batch per peer), then tells each of them
 * "done" whatever the result, so they free the blocks. Resolves with an outcome; blocks that did not arrive
 * are listed in `failedBlockIds` (recompute them), never reported as success.
 *
 * Push (layerwise / SGLang flow): `expect(requestId, blockIds)` returns the kv_transfer_params naming this
 * instance for the producer, and a promise that settles when every prefill rank that serves this rank has
 * written and notified (or the timeout passes, or a producer that started pushing stops answering probes).
 *
 * vLLM's MooncakeConnector (side channel 'vllm'): `pull(params, blockIds)` with the params the proxy gave
 * (transfer_id, remote_bootstrap_addr, remote_engine_id) asks each prefill rank to write into `blockIds` and
 * settles with their answers; the bytes are written by the prefill (direction 'receive').
 *
 * Every failure leaves a failure-ledger record (ledger.ts): on the outcome, as a 'failure' event, and in
 * takeFailures().
 */
import { MooncakeError, isMooncakeError } from '../errors';
import { probe } from '../handshake';
import { batchOutcome, checkBlockIds, checkRequestId, failureRecord, KvRankBase } from './rank-base';
import { asMooncakeError, failedBatch, mergePlans, type BatchResult } from './rank';
import type { KvMessage, KvRankRef } from './messages';
import type { KvMetricsSnapshot, KvRefusal, KvTransferOutcome } from './metrics';
import type { KvRankOptions } from './options';
import { alignBlocks, type KvTransferParams, type KvTransferParamsWire } from './params';
import type { KvParamsExtra } from './side-channel';
import type { KvFailureRecord, KvFailureStage } from './ledger';
import { planTransfer, type TransferPlan } from './plan';
import type { Segment } from '../engine/segment';
import { prefillRanksOf, slicesByRank, sourcesForDecodeRank, type HeadSlice } from './rank-map';
import type { KvPeer } from './registry';

export interface KvConsumerEvents {
  /** A pull or a push expectation finished (successfully or not). */
  transfer: [outcome: KvTransferOutcome];
  /** Push mode: a producer rank began writing an expected request (it is now probed until it reports). */
  pushStarted: [requestId: string, producer: { engineId: string; dpRank: number; tpRank: number }];
  warning: [error: MooncakeError];
  /** A failure-ledger record: a transfer failed (also on its outcome), or a "done" was not delivered. */
  failure: [record: KvFailureRecord];
  /** A push signal (or another KV message) was refused and did not count (see KvRefusalReason). */
  refused: [refusal: KvRefusal];
}

export interface KvPullOptions {
  /** Whole-pull timeout (registry lookups and transfers; default options.transferTimeoutMs). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface KvExpectation {
  requestId: string;
  /** For the producer (through the proxy's metaserver): names this instance and its blocks. */
  params: KvTransferParamsWire;
  /** Settles with the outcome once every serving prefill rank reported, or on timeout/dead producer. */
  done: Promise<KvTransferOutcome>;
  /** Gives up waiting (the outcome fails with ABORT_ERR). */
  cancel(): void;
}

interface Report {
  ok: boolean;
  failed: number[];
  bytes: number;
  ranges: number;
  from: KvRankRef;
}

interface Expectation {
  requestId: string;
  blockIds: number[];
  expected: Set<number>;
  reports: Map<number, Report>;
  started: number;
  timer: NodeJS.Timeout | undefined;
  watching: Map<number, string>;
  resolve: (o: KvTransferOutcome) => void;
}

interface Watch {
  host: string;
  port: number;
  waiters: Set<Expectation>;
  timer: NodeJS.Timeout;
  probing: boolean;
}

export class KvConsumer extends KvRankBase<KvConsumerEvents> {
  private readonly expectations = new Map<string, Expectation>();
  private readonly watches = new Map<string, Watch>();

  protected readonly side = 'decode';
  protected readonly signals = ['push_start', 'push_done'] as const;

  private constructor() {
    super();
  }

  static async create(options: KvRankOptions): Promise<KvConsumer> {
    const c = new KvConsumer();
    await c.open(options);
    return c;
  }

  /** The slices this rank gathers for a request (which prefill ranks, which heads). */
  sources(requestId: string): HeadSlice[] {
    return sourcesForDecodeRank(requestId, this.core.options.mapping, this.tpRank);
  }

  /**
   * Pull mode: reads this rank's share of the request's KV from the producer named by `params` into
   * `blockIds` (tail-aligned with `params.remote_block_ids` when fewer: a prefix-cache hit), then sends
   * "done" to every producer rank it used. Rejects only for invalid arguments (INVALID_ARGUMENT).
   */
  async pull(params: KvTransferParams | KvTransferParamsWire | Record<string, unknown>, blockIds: readonly number[], options: KvPullOptions = {}): Promise<KvTransferOutcome> {
    this.core.assertOpen();
    const channel = this.core.channel;
    const p = channel.parseParams(params);
    const local = checkBlockIds(this.layout, blockIds, 'blockIds');
    // vLLM: the prefill pairs the blocks (it knows its own); the decode only names its blocks.
    const receive = channel.receive?.bind(channel);
    const aligned = receive ? { remote: local, offset: 0 } : alignBlocks(local, p.remote_block_ids);
    const o = this.core.options;
    const requestId = p.remote_request_id;
    const start = performance.now();
    const deadline = start + (options.timeoutMs ?? o.transferTimeoutMs);
    const signal = options.signal;
    this.core.metrics.count('started');
    const groups = slicesByRank(this.sources(requestId), 'prefillRank');
    for (const r of channel.peerRanks?.(requestId, this.tpRank) ?? []) if (!groups.has(r)) groups.set(r, []);
    const results: BatchResult[] = [];
    const peers = new Map<number, KvPeer>();
    let setup: { error: MooncakeError; stage: KvFailureStage } | undefined;
    try {
      this.checkParamsShape(p);
      const timeout = AbortSignal.timeout(Math.max(1, Math.ceil(deadline - performance.now())));
      const lookupSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
      await Promise.all(
        [...groups].map(async ([prefillRank, slices]) => {
          if (receive) {
            results.push(await receive(p, prefillRank, local, slices, deadline, signal));
            return;
          }
          let peer: KvPeer;
          try {
            peer = await channel.lookup(p, prefillRank, lookupSignal);
          } catch (err) {
            results.push(failedBatch({ engineId: p.remote_engine_id, dpRank: p.remote_dp_rank ?? 0, tpRank: prefillRank, segment: '' }, local.length, asMooncakeError(err, 'looking up the prefill rank failed')));
            return;
          }
          peers.set(prefillRank, peer);
          results.push(await this.pullFrom(requestId, peer, slices, local, aligned.remote, deadline, signal));
        }),
      );
    } catch (err) {
      const error = asMooncakeError(err, 'pull failed');
      setup = { error, stage: error.code === 'ABORT_ERR' ? 'ABORT' : 'REGISTRATION' };
    }
    const { outcome, failed } = batchOutcome(this.failureSource, requestId, 'pull', receive ? 'receive' : 'read', local, results, setup, start);
    // "done" whatever happened (vllm-ascend's finally): the producer frees its blocks. A side channel that
    // can address the rank without its metadata (vllm-ascend) sends it even when the lookup failed; params
    // of another side channel get none (that producer would not understand it). With vLLM's connector the
    // prefill's answer was the end of the exchange: nothing more to send.
    const done = { ok: outcome.ok, failedBlockIds: failed.map((i) => aligned.remote[i]) };
    if (!receive && setup?.error.details?.field !== 'sideChannel') {
      for (const prefillRank of groups.keys()) {
        void this.core.track(channel.sendDone(p, prefillRank, peers.get(prefillRank), done)).then((delivered) => {
          if (delivered || this.core.closed) return;
          const peer = { engineId: p.remote_engine_id, dpRank: p.remote_dp_rank ?? 0, tpRank: prefillRank };
          this.recordFailure(requestId, 'NOTIFY', new MooncakeError('CONNECTION_LOST', `"done" for ${requestId} did not reach prefill rank ${peer.engineId}/${peer.tpRank}: it keeps its blocks until its abort timeout`), [], peer);
        });
      }
    }
    this.core.metrics.record(outcome);
    this.recordFailures(outcome.failures);
    this.emit('transfer', outcome);
    return outcome;
  }

  private async pullFrom(requestId: string, peer: KvPeer, slices: HeadSlice[], local: number[], remote: number[], deadline: number, signal: AbortSignal | undefined): Promise<BatchResult> {
    const e = peer.entry;
    const fail = (error: MooncakeError): BatchResult =>
      failedBatch({ engineId: e.engine_id, dpRank: e.dp_rank, tpRank: e.tp_rank, segment: e.segment }, local.length, error);
    const mismatch = this.peerShapeError(e, `${e.engine_id}/${e.dp_rank}/${e.tp_rank}`);
    if (mismatch) return fail(mismatch);
    try {
      const plan = this.pullPlan(peer, slices, local, remote);
      return await this.core.run('read', peer, plan, deadline, signal, this.core.options.detectStaleKv ? { requestId, blocks: remote } : undefined);
    } catch (err) {
      return fail(asMooncakeError(err, 'planning the pull failed'));
    }
  }

  /** The one batch that reads `slices` of the paired blocks from `peer`. */
  private pullPlan(peer: KvPeer, slices: HeadSlice[], local: number[], remote: number[]): TransferPlan {
    const mine = { layout: this.layout, tensors: this.caches.tensorAddresses, blockIds: local };
    const theirs = { layout: peer.layout, tensors: peer.tensors, blockIds: remote };
    return mergePlans(slices.map((s) => planTransfer({ ...mine, head: s.decodeHead }, { ...theirs, head: s.prefillHead }, s.count)));
  }

  /**
   * The batches `pull(params, blockIds)` would run (one per prefill rank), planned but not run: a benchmark
   * times the engine alone on exactly these ranges (without the hold-fence reads around them).
   * @internal
   */
  async plannedBatches(params: KvTransferParams | KvTransferParamsWire | Record<string, unknown>, blockIds: readonly number[]): Promise<{ segment: Segment; plan: TransferPlan }[]> {
    const p = this.core.channel.parseParams(params);
    const local = checkBlockIds(this.layout, blockIds, 'blockIds');
    const aligned = alignBlocks(local, p.remote_block_ids);
    const groups = slicesByRank(this.sources(p.remote_request_id), 'prefillRank');
    return Promise.all(
      [...groups].map(async ([prefillRank, slices]) => {
        const peer = await this.core.channel.lookup(p, prefillRank);
        return { segment: await this.core.segment(peer), plan: this.pullPlan(peer, slices, local, aligned.remote) };
      }),
    );
  }

  /**
   * Connects ahead of the first pull to the prefill instance `engineId`: every rank of its dp groups (default
   * all) this rank can read from. See KvRankCore.warmUp; resolves with how many peers failed.
   */
  warmUp(engineId: string, options: { dpRanks?: readonly number[] } = {}): Promise<{ peers: number; failed: number }> {
    const o = this.core.options;
    const tps = o.layout.attention === 'mla' || o.mapping.prefillTp > o.mapping.totalHeads
      ? [...Array(o.prefill.tpSize).keys()]
      : prefillRanksOf(sourcesForDecodeRank('warm-up', o.mapping, this.tpRank));
    return this.warmUpRanks(engineId, options.dpRanks, tps);
  }

  /**
   * Push mode: waits for the producer to write a request's blocks into `blockIds` (call it on every TP rank
   * of the instance with the same ids). Throws INVALID_ARGUMENT for bad ids or a request already expected.
   */
  expect(requestId: string, blockIds: readonly number[], options: { timeoutMs?: number } & KvParamsExtra = {}): KvExpectation {
    this.core.assertOpen();
    if (this.core.channel.receive) {
      throw new MooncakeError('INVALID_CONFIG', `the ${this.core.channel.name} side channel asks the prefill to write: call pull(params, blockIds) with the params the proxy gave`, { details: { field: 'sideChannel' } });
    }
    checkRequestId(requestId);
    const ids = checkBlockIds(this.layout, blockIds, 'blockIds');
    if (this.expectations.has(requestId)) throw new MooncakeError('INVALID_ARGUMENT', `request ${requestId} is already expected`);
    const timeoutMs = options.timeoutMs ?? this.core.options.transferTimeoutMs;
    // Params first: a side channel that cannot serve the request throws before anything is registered.
    const params = this.transferParams(requestId, ids, { promptTokens: options.promptTokens, lastTokenId: options.lastTokenId, cachedTokens: options.cachedTokens });
    let resolve!: (o: KvTransferOutcome) => void;
    const done = new Promise<KvTransferOutcome>((r) => (resolve = r));
    const x: Expectation = {
      requestId,
      blockIds: ids,
      expected: new Set(prefillRanksOf(this.sources(requestId))),
      reports: new Map(),
      started: performance.now(),
      timer: undefined,
      watching: new Map(),
      resolve,
    };
    this.expectations.set(requestId, x);
    if (ids.length === 0) {
      setImmediate(() => this.settle(x));
    } else {
      x.timer = setTimeout(() => this.settle(x, new MooncakeError('TIMEOUT', `no complete push for ${requestId} within ${timeoutMs} ms`)), timeoutMs);
      x.timer.unref();
      for (const m of this.early.take(requestId)) this.onPushMessage(x, m);
    }
    this.core.channel.announce?.(requestId, ids, params);
    return {
      requestId,
      params,
      done,
      cancel: () => this.settle(x, new MooncakeError('ABORT_ERR', `expectation of ${requestId} cancelled`)),
    };
  }

  /**
   * A push signal counts only when it echoes the request token of the params this rank made (expect()),
   * comes from a prefill rank the mapping pairs with this rank, and names only the expected blocks.
   */
  protected onMessage(m: KvMessage): boolean {
    if (m.type !== 'push_start' && m.type !== 'push_done') return this.refuse(m, 'not-a-peer');
    if (!this.tokenOk(m)) return this.refuse(m, 'bad-token');
    const x = this.expectations.get(m.request_id);
    if (x) return this.onPushMessage(x, m);
    if (!prefillRanksOf(this.sources(m.request_id)).includes(m.from.tp_rank)) return this.refuse(m, 'not-a-peer');
    return this.early.keep(m.request_id, m) || this.refuse(m, 'early-full');
  }

  private onPushMessage(x: Expectation, m: KvMessage): boolean {
    if (m.from.tp_size !== this.core.options.prefill.tpSize) {
      this.settle(x, new MooncakeError('INVALID_CONFIG', `prefill rank with tp_size ${m.from.tp_size} pushed ${x.requestId}; this consumer expects ${this.core.options.prefill.tpSize}`));
      return true;
    }
    if (!x.expected.has(m.from.tp_rank)) return this.refuse(m, 'not-a-peer');
    if (m.type === 'push_start') {
      if (!x.reports.has(m.from.tp_rank)) {
        this.watch(x, m.from);
        this.emit('pushStarted', x.requestId, { engineId: m.from.engine_id, dpRank: m.from.dp_rank, tpRank: m.from.tp_rank });
      }
      return true;
    }
    if (m.type !== 'push_done') return true;
    if (m.failed_block_ids.length > 0) {
      const mine = new Set(x.blockIds);
      if (!m.failed_block_ids.every((b) => mine.has(b))) return this.refuse(m, 'bad-block-ids');
    }
    // A failure report without block ids (vllm-ascend's failed_sending_msg) spoils every block.
    const failed = !m.ok && m.failed_block_ids.length === 0 ? [...x.blockIds] : m.failed_block_ids;
    x.reports.set(m.from.tp_rank, { ok: m.ok, failed, bytes: m.bytes, ranges: m.ranges, from: m.from });
    this.unwatch(x, m.from.tp_rank);
    if (x.reports.size === x.expected.size) this.settle(x);
    return true;
  }

  private watch(x: Expectation, from: KvRankRef): void {
    const key = `${from.host}:${from.rpc_port}`;
    x.watching.set(from.tp_rank, key);
    let w = this.watches.get(key);
    if (!w) {
      const interval = this.core.options.probeIntervalMs;
      const watch: Watch = { host: from.host, port: from.rpc_port, waiters: new Set(), probing: false, timer: setInterval(() => this.probeWatch(key, watch), interval) };
      watch.timer.unref();
      this.watches.set(key, watch);
      w = watch;
    }
    w.waiters.add(x);
  }

  private unwatch(x: Expectation, tpRank: number): void {
    const key = x.watching.get(tpRank);
    if (key === undefined) return;
    x.watching.delete(tpRank);
    const w = this.watches.get(key);
    if (!w) return;
    w.waiters.delete(x);
    if (w.waiters.size === 0) {
      clearInterval(w.timer);
      this.watches.delete(key);
    }
  }

  private async probeWatch(key: string, w: Watch): Promise<void> {
    if (w.probing) return;
    w.probing = true;
    const t = Math.min(1000, this.core.options.probeIntervalMs);
    try {
      await probe(w.host, w.port, { connectTimeoutMs: t, timeoutMs: 2 * t });
    } catch (err) {
      const error = new MooncakeError(isMooncakeError(err, 'TIMEOUT') ? 'TIMEOUT' : 'CONNECTION_LOST', `producer ${key} stopped answering while pushing`, { cause: err });
      for (const x of [...w.waiters]) this.settle(x, error);
    } finally {
      w.probing = false;
    }
  }

  private settle(x: Expectation, error?: MooncakeError): void {
    if (this.expectations.get(x.requestId) !== x) return;
    this.expectations.delete(x.requestId);
    if (x.timer) clearTimeout(x.timer);
    for (const r of [...x.watching.keys()]) this.unwatch(x, r);
    const failed = new Set<number>();
    let complete = true;
    for (const r of x.expected) {
      const rep = x.reports.get(r);
      if (!rep) complete = false;
      else for (const b of rep.failed) failed.add(b);
    }
    // A missing slice spoils every block (each block needs all its heads).
    if (!complete || (error && x.reports.size < x.expected.size)) for (const b of x.blockIds) failed.add(b);
    const reports = [...x.reports.values()];
    const failedBlockIds = x.blockIds.filter((b) => failed.has(b));
    const outcome: KvTransferOutcome = {
      failures: [],
      requestId: x.requestId,
      mode: 'push',
      direction: 'receive',
      ok: failedBlockIds.length === 0,
      blockIds: x.blockIds,
      failedBlockIds,
      bytes: reports.reduce((a, r) => a + r.bytes, 0),
      ranges: reports.reduce((a, r) => a + r.ranges, 0),
      durationMs: performance.now() - x.started,
      peers: reports.map((r) => ({
        engineId: r.from.engine_id,
        dpRank: r.from.dp_rank,
        tpRank: r.from.tp_rank,
        segment: '',
        bytes: r.bytes,
        ranges: r.ranges,
        ok: r.ok,
      })),
    };
    if (!outcome.ok) {
      outcome.error = error ?? new MooncakeError('REMOTE_REJECTED', `the producer reported ${failedBlockIds.length} failed blocks for ${x.requestId}`);
      outcome.failures = this.expectationFailures(x, error, failedBlockIds);
    }
    this.core.metrics.count('started');
    this.core.metrics.record(outcome);
    this.recordFailures(outcome.failures);
    x.resolve(outcome);
    this.emit('transfer', outcome);
  }

  /** Ledger records of a push expectation that failed: each producer's failure report, and why waiting ended. */
  private expectationFailures(x: Expectation, error: MooncakeError | undefined, failedBlockIds: number[]): KvFailureRecord[] {
    const src = this.failureSource;
    const out: KvFailureRecord[] = [];
    for (const r of x.reports.values()) {
      if (r.ok && r.failed.length === 0) continue;
      const peer = { engineId: r.from.engine_id, dpRank: r.from.dp_rank, tpRank: r.from.tp_rank };
      out.push(failureRecord(src, x.requestId, 'SEND', new MooncakeError('REMOTE_REJECTED', `prefill rank ${peer.engineId}/${peer.tpRank} reported ${r.failed.length} failed blocks for ${x.requestId}`), r.failed, peer));
    }
    if (error) {
      const stage: KvFailureStage = error.code === 'ABORT_ERR' || error.code === 'CLOSED' ? 'ABORT' : error.code === 'TIMEOUT' ? 'TIMEOUT' : error.code === 'INVALID_CONFIG' ? 'REGISTRATION' : 'RECV';
      out.push(failureRecord(src, x.requestId, stage, error, failedBlockIds));
    }
    return out;
  }

  metrics(): KvMetricsSnapshot {
    return { ...this.snapshot(), expectations: { active: this.expectations.size } };
  }

  /** Fails pending expectations (ABORT_ERR), removes the registry entry and closes the engine it created. */
  async close(): Promise<void> {
    for (const x of [...this.expectations.values()]) this.settle(x, new MooncakeError('CLOSED', 'the consumer closed'));
    await this.core.close();
  }
}
