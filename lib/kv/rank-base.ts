import { EventEmitter } from 'node:events';
import { MooncakeError } from '../errors';
import type { MetricFamily } from '../metrics/types';
import type { KvCaches } from './caches';
import type { KvLayout } from './layout';
import { kvMessageBytes, type KvMessage } from './messages';
import type { KvMetricsSnapshot, KvRefusal, KvRefusalReason, KvTransferOutcome } from './metrics';
import { resolveKvOptions, type KvRankOptions } from './options';
import { checkDistinct, type KvTransferParams, type KvTransferParamsWire } from './params';
import { EarlyMessages } from './early';
import { KvRankCore, type BatchResult } from './rank';
import type { KvParamsExtra, KvSideChannelName } from './side-channel';
import { failureAdvice, type KvFailureRecord, type KvFailureStage } from './ledger';
import type { KvRankEntry } from './registry';
import { RequestTokens } from './tokens';

/** How many requests a rank remembers (early messages, recently released holds) at the most. */
export const MEMORY = 10_000;

export function checkRequestId(requestId: unknown): asserts requestId is string {
  if (typeof requestId !== 'string' || requestId === '' || requestId.length > 1024) {
    throw new MooncakeError('INVALID_ARGUMENT', `request id must be a non-empty string of at most 1024 characters, got ${JSON.stringify(requestId)}`);
  }
}

/**
 * Validated block ids. `distinct` (the field name) for blocks that are written into: see checkDistinct.
 */
export function checkBlockIds(layout: KvLayout, ids: unknown, distinct?: string): number[] {
  if (!Array.isArray(ids)) throw new MooncakeError('INVALID_ARGUMENT', 'block ids must be an array of integers');
  for (const id of ids) layout.checkBlock(id as number);
  if (distinct !== undefined) checkDistinct(ids as number[], distinct);
  return [...(ids as number[])];
}


/** Which rank records a failure: its side and side channel. */
export interface FailureSource {
  side: 'prefill' | 'decode';
  sideChannel: KvSideChannelName;
}

/** A ledger record of `error` at `stage` (ledger.ts). */
export function failureRecord(src: FailureSource, requestId: string, stage: KvFailureStage, error: MooncakeError, blockIds: number[], peer?: KvFailureRecord['peer']): KvFailureRecord {
  return {
    requestId,
    stage,
    code: error.code,
    detail: error.message,
    advice: failureAdvice(stage, error.code),
    side: src.side,
    sideChannel: src.sideChannel,
    ...(peer ? { peer } : {}),
    blockIds,
    at: Date.now(),
  };
}

/**
 * The outcome of a pull or push run as one batch per peer: a block failed when a batch failed its pair,
 * or every block when the set-up failed (`setup`). Every failed batch (and the set-up) leaves a failure-ledger
 * record. Also returns the failed pair indices, sorted.
 */
export function batchOutcome(
  src: FailureSource,
  requestId: string,
  mode: 'pull' | 'push',
  direction: KvTransferOutcome['direction'],
  blockIds: number[],
  results: readonly BatchResult[],
  setup: { error: MooncakeError; stage: KvFailureStage } | undefined,
  start: number,
): { outcome: KvTransferOutcome; failed: number[] } {
  const failedIdx = new Set<number>();
  const failures: KvFailureRecord[] = [];
  for (const r of results) {
    for (const i of r.failed) failedIdx.add(i);
    if (r.failed.length === 0 && !r.error) continue;
    const error = r.error ?? new MooncakeError('INTERNAL', `${r.failed.length} blocks did not arrive`);
    const peer = { engineId: r.peer.engineId, dpRank: r.peer.dpRank, tpRank: r.peer.tpRank };
    failures.push(failureRecord(src, requestId, r.stage ?? 'RECV', error, r.failed.map((i) => blockIds[i]), peer));
  }
  if (setup) {
    for (let i = 0; i < blockIds.length; i++) failedIdx.add(i);
    failures.push(failureRecord(src, requestId, setup.stage, setup.error, [...blockIds]));
  }
  const failed = [...failedIdx].sort((a, b) => a - b);
  const outcome: KvTransferOutcome = {
    requestId,
    mode,
    direction,
    ok: failed.length === 0,
    blockIds,
    failedBlockIds: failed.map((i) => blockIds[i]),
    bytes: results.reduce((a, r) => a + r.peer.bytes, 0),
    ranges: results.reduce((a, r) => a + r.peer.ranges, 0),
    durationMs: performance.now() - start,
    peers: results.map((r) => r.peer),
    failures,
  };
  const error = setup?.error ?? results.find((r) => r.error)?.error;
  if (!outcome.ok && error) outcome.error = error;
  return { outcome, failed };
}

/** What KvProducer and KvConsumer share: the rank core behind them, its identity, warnings, disposal. */
export abstract class KvRankBase<Events extends Record<keyof Events, unknown[]> & { warning: [error: MooncakeError]; failure: [record: KvFailureRecord]; refused: [refusal: KvRefusal] }> extends EventEmitter<Events> {
  protected core!: KvRankCore;
  /** Tokens of the requests this rank makes params for, and of the other side's signals about them. */
  protected tokens!: RequestTokens;
  /** Signals for requests not held / expected yet. */
  protected early!: EarlyMessages<KvMessage>;
  /** Which group this rank belongs to: prefill (producer) or decode (consumer). */
  protected abstract readonly side: 'prefill' | 'decode';
  /** The signals this rank acts on ("done" for a producer, push signals for a consumer). */
  protected abstract readonly signals: readonly KvMessage['type'][];

  /** Opens the rank core (engine, caches, registry entry); its KV messages go to onMessage. */
  protected async open(options: KvRankOptions): Promise<void> {
    const o = resolveKvOptions(options, this.side === 'prefill' ? 'kv_producer' : 'kv_consumer');
    this.tokens = new RequestTokens(o.holdKey, o.engineId, o.dpRank);
    this.early = new EarlyMessages(o.earlyMessages, kvMessageBytes);
    // A message can arrive while the side channel starts, before `core` is set: nothing was issued yet
    // that it could be about, so it is refused (uncounted).
    this.core = await KvRankCore.open(o, options, this.side, (m) => this.core !== undefined && this.receive(m), (e) => this.warn(e), (r) => this.core !== undefined && this.refused(r));
    const keys = this.core.channel.instanceKeys;
    if (keys) {
      this.tokens.accept(keys);
      keys.onRound = (startedAt, ok) => this.recheck(startedAt, ok);
    }
  }

  /**
   * A signal whose token fails every key this rank knows while the key of some rank of its instance is not
   * known yet may echo params that rank issued: it waits (acknowledged, in the early buffer) for a read of
   * the instance's keys instead of being refused.
   */
  private receive(m: KvMessage): boolean {
    const keys = this.core.channel.instanceKeys;
    if (keys && !keys.complete() && this.signals.includes(m.type) && this.tokens.check(m.request_id, m.token) === 'unknown') {
      if (!this.early.keepUnverified(m)) return this.refuse(m, 'early-full');
      keys.learn();
      return true;
    }
    return this.onMessage(m);
  }

  /**
   * After a read of the instance's keys: a waiting signal goes on when its token now checks either way, or
   * when a read that began after it arrived found no key that makes it (then onMessage refuses it).
   */
  private recheck(startedAt: number, ok: boolean): void {
    const settled = this.early.takeUnverified((m, arrived) => (ok && startedAt >= arrived) || this.tokens.check(m.request_id, m.token) !== 'unknown');
    for (const m of settled) this.onMessage(m);
    if (this.early.unverifiedCount > 0) this.core.channel.instanceKeys?.learn();
  }

  /** A signal from the other side; false when it is refused (refuse()). */
  protected abstract onMessage(m: KvMessage): boolean;

  /** Counts a refused message and announces it ('refused' event). Returns false, for onMessage. */
  protected refuse(m: KvMessage, reason: KvRefusalReason): false {
    this.refused({
      reason,
      type: m.type,
      requestId: m.request_id,
      from: { engineId: m.from.engine_id, dpRank: m.from.dp_rank, tpRank: m.from.tp_rank, tpSize: m.from.tp_size, host: m.from.host },
    });
    return false;
  }

  private refused(r: KvRefusal): true {
    this.core.metrics.refuse(r.reason);
    const emitter = this as unknown as EventEmitter;
    if (emitter.listenerCount('refused') > 0) emitter.emit('refused', r);
    return true;
  }

  /** The metrics both sides share (early messages included). */
  protected snapshot(): KvMetricsSnapshot {
    return this.core.metrics.snapshot(this.early.stats());
  }

  /** Counters of this rank (holds for a producer, expectations for a consumer). */
  abstract metrics(): KvMetricsSnapshot;

  /**
   * This rank's metrics for a `MetricsRegistry` (docs/metrics.md), labelled with its side and its
   * engine's name. The engine (`rank.engine`) reports its own: register both.
   */
  collectMetrics(): MetricFamily[] {
    return this.core.metrics.families(this.metrics(), { side: this.side, engine: this.core.engine.localServerName });
  }

  /** The group this rank moves KV with: decode for a producer, prefill for a consumer. */
  private get otherSide(): 'prefill' | 'decode' {
    return this.side === 'prefill' ? 'decode' : 'prefill';
  }

  /** 'producer' or 'consumer', as messages name this rank. */
  private get kind(): string {
    return this.side === 'prefill' ? 'producer' : 'consumer';
  }

  get engine(): KvRankCore['engine'] {
    return this.core.engine;
  }
  get caches(): KvCaches {
    return this.core.caches;
  }
  get layout(): KvLayout {
    return this.core.options.layout;
  }
  get engineId(): string {
    return this.core.options.engineId;
  }
  get dpRank(): number {
    return this.core.options.dpRank;
  }
  get tpRank(): number {
    return this.core.options.tpRank;
  }
  /**
   * Where peers reach this rank's side channel: its registry key (mooncake-node), or the `host:port` of its
   * ZMQ socket (vllm-ascend).
   */
  get registryKey(): string {
    return this.core.channel.address;
  }

  /** The side channel this rank speaks ('mooncake-node' or 'vllm-ascend'). */
  get sideChannel(): KvSideChannelName {
    return this.core.channel.name;
  }

  /**
   * The kv_transfer_params naming this rank for a request (what `hold` / `expect` return). mooncake-node:
   * its engine id, host, kv port (kv_port + dp_rank × tp_size, vllm-ascend's rule), dp rank, the block
   * ids and the request token (`remote_token`); vllm-ascend: exactly the keys its `request_finished`
   * returns.
   */
  transferParams(requestId: string, blockIds: readonly number[], extra?: KvParamsExtra): KvTransferParamsWire {
    return this.core.channel.transferParams(requestId, blockIds, { ...extra, token: this.tokens.token(requestId) });
  }

  /** False when the channel carries request tokens and `m` does not echo one made for its request by a rank of this instance. */
  protected tokenOk(m: KvMessage): boolean {
    return !this.core.channel.tokens || this.tokens.verify(m.request_id, m.token);
  }

  /**
   * Throws INVALID_CONFIG when kv_transfer_params come from another side channel, or give another tp_size,
   * KV head count or block size than configured.
   */
  protected checkParamsShape(p: KvTransferParams): void {
    this.core.channel.checkParams(p);
    const o = this.core.options;
    if (p.remote_block_size !== undefined && p.remote_block_size !== o.layout.blockSize) {
      throw new MooncakeError('INVALID_CONFIG', `the ${this.otherSide} instance has block size ${String(p.remote_block_size)}, this ${this.kind} ${o.layout.blockSize}`);
    }
    const tpSize = o[this.otherSide].tpSize;
    if (p.remote_tp_size !== undefined && p.remote_tp_size !== tpSize) {
      throw new MooncakeError('INVALID_CONFIG', `the ${this.otherSide} instance has tp_size ${p.remote_tp_size}, this ${this.kind} is configured for ${tpSize}`);
    }
    if (p.remote_total_kv_heads !== undefined && p.remote_total_kv_heads !== o.totalKvHeads) {
      throw new MooncakeError('INVALID_CONFIG', `the ${this.otherSide} instance counts ${p.remote_total_kv_heads} KV heads, this ${this.kind} ${o.totalKvHeads}`);
    }
  }

  /** INVALID_CONFIG when the peer rank `name` (engine/dp/tp) registered another tp_size or KV head count than configured. */
  protected peerShapeError(e: KvRankEntry, name: string): MooncakeError | undefined {
    const o = this.core.options;
    const tpSize = o[this.otherSide].tpSize;
    if (e.total_kv_heads === o.totalKvHeads && e.tp_size === tpSize) return undefined;
    return new MooncakeError('INVALID_CONFIG', `${this.otherSide} rank ${name} has tp_size ${e.tp_size} and ${e.total_kv_heads} KV heads; expected ${tpSize} and ${o.totalKvHeads}`);
  }

  /** KvRankCore.warmUp with `tpRanks` of each of the other side's dp groups `dpRanks` (default all). */
  protected warmUpRanks(engineId: string, dpRanks: readonly number[] | undefined, tpRanks: readonly number[]): Promise<{ peers: number; failed: number }> {
    const dps = dpRanks ?? [...Array(this.core.options[this.otherSide].dpSize).keys()];
    return this.core.warmUp(engineId, dps.flatMap((dpRank) => tpRanks.map((tpRank) => ({ dpRank, tpRank }))));
  }

  /** Who records this rank's failures. */
  protected get failureSource(): FailureSource {
    return { side: this.side, sideChannel: this.core.channel.name };
  }

  /** Keeps failure-ledger records (takeFailures, metrics) and emits each as a 'failure' event. */
  protected recordFailures(records: readonly KvFailureRecord[]): void {
    const emitter = this as unknown as EventEmitter;
    for (const r of records) {
      this.core.metrics.ledger.add(r);
      if (emitter.listenerCount('failure') > 0) emitter.emit('failure', r);
    }
  }

  /** A failure outside a transfer outcome (a completion signal not delivered, a hold force-freed). */
  protected recordFailure(requestId: string, stage: KvFailureStage, error: MooncakeError, blockIds: number[], peer?: KvFailureRecord['peer']): void {
    this.recordFailures([failureRecord(this.failureSource, requestId, stage, error, blockIds, peer)]);
  }

  /**
   * Drains the failure-ledger records kept since the last call (the last 1024 at the most), oldest first:
   * where each transfer failure came from and whether to recompute or re-route (see the 'failure' event).
   */
  takeFailures(): KvFailureRecord[] {
    return this.core.metrics.ledger.take();
  }

  /** Background problems go to 'warning' listeners when there are any (never an unhandled 'error'). */
  protected warn(e: MooncakeError): void {
    const emitter = this as unknown as EventEmitter;
    if (emitter.listenerCount('warning') > 0) emitter.emit('warning', e);
  }

  abstract close(): Promise<void>;

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
