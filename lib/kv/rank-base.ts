import { EventEmitter } from 'node:events';
import { MooncakeError } from '../errors';
import type { KvCaches } from './caches';
import type { KvLayout } from './layout';
import { kvMessageBytes, type KvMessage } from './messages';
import type { KvMetricsSnapshot, KvRefusal, KvRefusalReason, KvTransferOutcome } from './metrics';
import { resolveKvOptions, type KvRankOptions } from './options';
import type { KvTransferParams, KvTransferParamsWire } from './params';
import { KvRankCore, type BatchResult } from './rank';
import type { KvParamsExtra, KvSideChannelName } from './side-channel';
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

/**
 * Blocks that are written into (a pull's or an expectation's local blocks, a push's remote ones) must be
 * distinct: a block listed twice would receive two blocks' KV and keep one of them, reported as success.
 * INVALID_ARGUMENT before anything moves.
 */
export function checkDistinct(ids: readonly number[], field: string): void {
  const seen = new Set<number>();
  for (const id of ids) {
    if (seen.has(id)) {
      throw new MooncakeError('INVALID_ARGUMENT', `${field} lists block ${id} more than once: two blocks of KV cannot land in one block`, {
        details: { field, blockId: id },
      });
    }
    seen.add(id);
  }
}

export interface EarlyLimits {
  maxCount: number;
  maxBytes: number;
  ttlMs: number;
}

/**
 * Messages for requests this rank does not know yet (a peer may be faster than this rank's hold() or
 * expect()), kept until the request shows up or for `ttlMs` after the first one arrived. Bounded by
 * messages (`maxCount`) and by bytes (`maxBytes`, as `sizeOf` counts them): when either is reached, new
 * messages are refused (`keep` returns false) and what is kept stays. Expired messages are dropped first.
 */
export class EarlyMessages<M> {
  private readonly byRequest = new Map<string, { messages: M[]; bytes: number; expires: number }>();
  private count = 0;
  private total = 0;
  private expiredCount = 0;

  constructor(private readonly limits: EarlyLimits, private readonly sizeOf: (m: M) => number) {}

  /** Messages and bytes kept now, and messages dropped because their request never came. */
  stats(): { held: number; bytes: number; expired: number } {
    this.expire(performance.now());
    return { held: this.count, bytes: this.total, expired: this.expiredCount };
  }

  /** Requests are kept in arrival order, so the expired ones are at the front. */
  private expire(now: number): void {
    for (const [k, e] of this.byRequest) {
      if (e.expires > now) break;
      this.drop(k, e);
      this.expiredCount += e.messages.length;
    }
  }

  private drop(requestId: string, e: { messages: M[]; bytes: number }): void {
    this.byRequest.delete(requestId);
    this.count -= e.messages.length;
    this.total -= e.bytes;
  }

  /** Keeps `m` for `requestId`; false when it does not fit (nothing kept). */
  keep(requestId: string, m: M): boolean {
    const now = performance.now();
    this.expire(now);
    const size = this.sizeOf(m);
    if (this.count + 1 > this.limits.maxCount || this.total + size > this.limits.maxBytes) return false;
    let e = this.byRequest.get(requestId);
    if (!e) {
      e = { messages: [], bytes: 0, expires: now + this.limits.ttlMs };
      this.byRequest.set(requestId, e);
    }
    e.messages.push(m);
    e.bytes += size;
    this.count++;
    this.total += size;
    return true;
  }

  /** The unexpired messages kept for a request (forgotten here), in arrival order. */
  take(requestId: string): M[] {
    this.expire(performance.now());
    const e = this.byRequest.get(requestId);
    if (!e) return [];
    this.drop(requestId, e);
    return e.messages;
  }
}

/**
 * The outcome of a pull or push run as one batch per peer: a block failed when a batch failed its pair,
 * or every block when the set-up failed (`setupError`). Also returns the failed pair indices, sorted.
 */
export function batchOutcome(
  requestId: string,
  mode: 'pull' | 'push',
  direction: 'read' | 'write',
  blockIds: number[],
  results: readonly BatchResult[],
  setupError: MooncakeError | undefined,
  start: number,
): { outcome: KvTransferOutcome; failed: number[] } {
  const failedIdx = new Set<number>();
  for (const r of results) for (const i of r.failed) failedIdx.add(i);
  if (setupError) for (let i = 0; i < blockIds.length; i++) failedIdx.add(i);
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
  };
  const error = setupError ?? results.find((r) => r.error)?.error;
  if (!outcome.ok && error) outcome.error = error;
  return { outcome, failed };
}

/** What KvProducer and KvConsumer share: the rank core behind them, its identity, warnings, disposal. */
export abstract class KvRankBase<Events extends Record<keyof Events, unknown[]> & { warning: [error: MooncakeError]; refused: [refusal: KvRefusal] }> extends EventEmitter<Events> {
  protected core!: KvRankCore;
  /** Tokens of the requests this rank makes params for, and of the other side's signals about them. */
  protected tokens!: RequestTokens;
  /** Signals for requests not held / expected yet. */
  protected early!: EarlyMessages<KvMessage>;
  /** Which group this rank belongs to: prefill (producer) or decode (consumer). */
  protected abstract readonly side: 'prefill' | 'decode';

  /** Opens the rank core (engine, caches, registry entry); its KV messages go to onMessage. */
  protected async open(options: KvRankOptions): Promise<void> {
    const o = resolveKvOptions(options, this.side === 'prefill' ? 'kv_producer' : 'kv_consumer');
    this.tokens = new RequestTokens(o.holdKey, o.engineId, o.dpRank);
    this.early = new EarlyMessages(o.earlyMessages, kvMessageBytes);
    // A message can arrive while the side channel starts, before `core` is set: nothing was issued yet
    // that it could be about, so it is refused (uncounted).
    this.core = await KvRankCore.open(o, options, this.side, (m) => this.core !== undefined && this.onMessage(m), (e) => this.warn(e), (r) => this.core !== undefined && this.refused(r));
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
    this.core.metrics.refused[r.reason]++;
    const emitter = this as unknown as EventEmitter;
    if (emitter.listenerCount('refused') > 0) emitter.emit('refused', r);
    return true;
  }

  /** The metrics both sides share (early messages included). */
  protected snapshot(): KvMetricsSnapshot {
    return this.core.metrics.snapshot(this.early.stats());
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

  /** False when the channel carries request tokens and `m` does not echo its request's. */
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
