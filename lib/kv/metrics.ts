/**
 * Per-request transfer outcomes and the counters behind `metrics()`.
 */
import { summarizeSorted } from '../latency';
import type { ErrorCode, MooncakeError } from '../errors';

/** One peer of a request: the rank it moved blocks with. */
export interface KvTransferPeer {
  engineId: string;
  dpRank: number;
  tpRank: number;
  /** The peer engine's segment name ('' when the peer was never resolved). */
  segment: string;
  bytes: number;
  /** Transfer requests (coalesced ranges) in the batch. */
  ranges: number;
  ok: boolean;
  error?: ErrorCode;
}

/**
 * The result of moving one request's blocks on one rank. A transfer that failed in full or in part has
 * `ok: false` and lists the blocks that did not arrive in `failedBlockIds` (the caller's local block ids):
 * recompute those, never use them.
 */
export interface KvTransferOutcome {
  requestId: string;
  mode: 'pull' | 'push';
  /** 'read' (pull, on the consumer), 'write' (push, on the producer) or 'receive' (push, on the consumer). */
  direction: 'read' | 'write' | 'receive';
  ok: boolean;
  /** The caller's local block ids involved. */
  blockIds: number[];
  /** Local block ids whose KV did not arrive (empty when ok). */
  failedBlockIds: number[];
  /** Bytes moved by batches that succeeded. */
  bytes: number;
  ranges: number;
  durationMs: number;
  peers: KvTransferPeer[];
  /** The first error, when not ok. */
  error?: MooncakeError;
}

/**
 * Why a KV message was refused (not acted on; the sender is told where the side channel can):
 * - 'too-large' / 'malformed': refused before it was read / it is not a KV message of this version;
 * - 'bad-token': it does not echo the request token of the params it is about (tokens.ts);
 * - 'not-a-peer': its sender is not a rank the rank mapping pairs with this one for the request;
 * - 'wrong-tp-size': its sender's tp size is not the configured one;
 * - 'bad-block-ids': it names blocks the request does not have;
 * - 'early-full': the request is not known yet and the early-message buffer is full.
 */
export type KvRefusalReason = 'too-large' | 'malformed' | 'bad-token' | 'not-a-peer' | 'wrong-tp-size' | 'bad-block-ids' | 'early-full';

export const KV_REFUSAL_REASONS: readonly KvRefusalReason[] = ['too-large', 'malformed', 'bad-token', 'not-a-peer', 'wrong-tp-size', 'bad-block-ids', 'early-full'];

/** A refused KV message (the 'refused' event of KvProducer and KvConsumer). */
export interface KvRefusal {
  reason: KvRefusalReason;
  /** What could be read of it (nothing for 'too-large'). */
  type?: 'done' | 'push_start' | 'push_done';
  requestId?: string;
  from?: { engineId: string; dpRank: number; tpRank: number; tpSize: number; host: string };
}

/** Why a producer let go of a request's blocks. */
export type KvReleaseReason = 'done' | 'abort-timeout' | 'not-selected' | 'released' | 'closed';

export interface KvDurationSummary {
  count: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface KvMetricsSnapshot {
  transfers: { started: number; succeeded: number; failed: number; inFlight: number };
  bytes: number;
  ranges: number;
  failedBlocks: number;
  /** Of those, blocks read while the producer did not hold them (STALE_KV: force-freed, released or not yet held). */
  staleBlocks: number;
  /** Over the last 1024 finished transfers. */
  duration: KvDurationSummary;
  notifies: { sent: number; sendFailed: number; received: number; malformed: number };
  /** KV messages refused, by reason (see KvRefusalReason). */
  refused: Record<KvRefusalReason, number>;
  /** Messages kept for requests not held / expected yet, and those dropped when their time ran out. */
  early: { held: number; bytes: number; expired: number };
  /** Producer only: requests whose blocks are held for consumers. */
  holds?: { active: number; released: Record<KvReleaseReason, number>; lateDone: number };
  /** Consumer only: push expectations waiting for producers. */
  expectations?: { active: number };
}

const WINDOW = 1024;

export class KvMetrics {
  started = 0;
  succeeded = 0;
  failed = 0;
  bytes = 0;
  ranges = 0;
  failedBlocks = 0;
  notifiesSent = 0;
  notifiesFailed = 0;
  notifiesReceived = 0;
  malformed = 0;
  lateDone = 0;
  /** Consumer: blocks a pull read while their producer did not hold them (STALE_KV). */
  staleBlocks = 0;
  readonly released: Record<KvReleaseReason, number> = { done: 0, 'abort-timeout': 0, 'not-selected': 0, released: 0, closed: 0 };
  readonly refused = Object.fromEntries(KV_REFUSAL_REASONS.map((r) => [r, 0])) as Record<KvRefusalReason, number>;
  private readonly durations: number[] = [];
  private next = 0;

  record(o: KvTransferOutcome): void {
    if (o.ok) this.succeeded++;
    else this.failed++;
    this.bytes += o.bytes;
    this.ranges += o.ranges;
    this.failedBlocks += o.failedBlockIds.length;
    if (this.durations.length < WINDOW) this.durations.push(o.durationMs);
    else this.durations[this.next++ % WINDOW] = o.durationMs;
  }

  summary(): KvDurationSummary {
    const s = summarizeSorted([...this.durations].sort((a, b) => a - b));
    return { count: this.durations.length, meanMs: s.mean, p50Ms: s.p50, p99Ms: s.p99, maxMs: s.max };
  }

  snapshot(early: KvMetricsSnapshot['early']): KvMetricsSnapshot {
    return {
      transfers: { started: this.started, succeeded: this.succeeded, failed: this.failed, inFlight: this.started - this.succeeded - this.failed },
      bytes: this.bytes,
      ranges: this.ranges,
      failedBlocks: this.failedBlocks,
      staleBlocks: this.staleBlocks,
      duration: this.summary(),
      notifies: { sent: this.notifiesSent, sendFailed: this.notifiesFailed, received: this.notifiesReceived, malformed: this.malformed },
      refused: { ...this.refused },
      early,
    };
  }
}
