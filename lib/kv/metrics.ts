/**
 * Per-request transfer outcomes and the counters behind `metrics()`.
 */
import { summarizeSorted } from '../util/stats';
import { Histogram } from '../metrics/histogram';
import { counter, gauge, histogram, type Labels, type MetricFamily } from '../metrics/types';
import type { ErrorCode, MooncakeError } from '../errors';
import { KvFailureLedger, type KvFailureRecord, type KvFailureStage } from './ledger';

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
  /**
   * The failure ledger's records of this transfer (empty when ok): where each failure came from, which peer,
   * which blocks, and whether to recompute or re-route (ledger.ts).
   */
  failures: KvFailureRecord[];
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
  /** KV messages refused, by reason (see KvRefusalReason). Refused messages never reach the failure ledger. */
  refused: Record<KvRefusalReason, number>;
  /** Messages kept for requests not held / expected yet, and those dropped when their time ran out. */
  early: { held: number; bytes: number; expired: number };
  /** Failure-ledger records so far, by stage. */
  failures: Record<KvFailureStage, number>;
  /** Producer only: requests whose blocks are held for consumers. */
  holds?: { active: number; released: Record<KvReleaseReason, number>; lateDone: number };
  /** Consumer only: push expectations waiting for producers. */
  expectations?: { active: number };
}

const WINDOW = 1024;

/** Event counters a rank bumps through `KvMetrics.count()`. */
export type KvCounter = 'started' | 'notifiesSent' | 'notifiesFailed' | 'notifiesReceived' | 'malformed' | 'lateDone' | 'staleBlocks';

type Direction = KvTransferOutcome['direction'];
const DIRECTIONS: readonly Direction[] = ['read', 'write', 'receive'];

interface PerDirection {
  ok: number;
  failed: number;
  bytes: number;
  failedBlocks: number;
  duration: Histogram;
}

/**
 * A rank's counters. Read-only from outside: the rank changes them through `count`, `refuse`,
 * `release` and `record`; `snapshot()` and `families()` read them.
 */
export class KvMetrics {
  private readonly counters: Record<KvCounter, number> = { started: 0, notifiesSent: 0, notifiesFailed: 0, notifiesReceived: 0, malformed: 0, lateDone: 0, staleBlocks: 0 };
  private readonly releasedBy: Record<KvReleaseReason, number> = { done: 0, 'abort-timeout': 0, 'not-selected': 0, released: 0, closed: 0 };
  private readonly refusedBy = Object.fromEntries(KV_REFUSAL_REASONS.map((r) => [r, 0])) as Record<KvRefusalReason, number>;
  private readonly byDirection = new Map<Direction, PerDirection>();
  private rangeCount = 0;
  /** The failure ledger of the rank (records for takeFailures(), counts for snapshot()). */
  readonly ledger = new KvFailureLedger();
  private readonly durations: number[] = [];
  private next = 0;

  count(name: KvCounter, n = 1): void {
    this.counters[name] += n;
  }

  /** A producer let go of a request's blocks. */
  release(reason: KvReleaseReason): void {
    this.releasedBy[reason]++;
  }

  /** A KV message was refused. */
  refuse(reason: KvRefusalReason): void {
    this.refusedBy[reason]++;
  }

  record(o: KvTransferOutcome): void {
    let d = this.byDirection.get(o.direction);
    if (d === undefined) {
      d = { ok: 0, failed: 0, bytes: 0, failedBlocks: 0, duration: new Histogram() };
      this.byDirection.set(o.direction, d);
    }
    if (o.ok) d.ok++;
    else d.failed++;
    d.bytes += o.bytes;
    d.failedBlocks += o.failedBlockIds.length;
    d.duration.observe(o.durationMs / 1000);
    this.rangeCount += o.ranges;
    if (this.durations.length < WINDOW) this.durations.push(o.durationMs);
    else this.durations[this.next++ % WINDOW] = o.durationMs;
  }

  get started(): number {
    return this.counters.started;
  }
  get succeeded(): number {
    return this.sum((d) => d.ok);
  }
  get failed(): number {
    return this.sum((d) => d.failed);
  }
  get bytes(): number {
    return this.sum((d) => d.bytes);
  }
  get ranges(): number {
    return this.rangeCount;
  }
  get failedBlocks(): number {
    return this.sum((d) => d.failedBlocks);
  }
  /** Consumer: blocks a pull read while their producer did not hold them (STALE_KV). */
  get staleBlocks(): number {
    return this.counters.staleBlocks;
  }
  get notifiesSent(): number {
    return this.counters.notifiesSent;
  }
  get notifiesFailed(): number {
    return this.counters.notifiesFailed;
  }
  get notifiesReceived(): number {
    return this.counters.notifiesReceived;
  }
  get malformed(): number {
    return this.counters.malformed;
  }
  get lateDone(): number {
    return this.counters.lateDone;
  }
  get released(): Readonly<Record<KvReleaseReason, number>> {
    return { ...this.releasedBy };
  }
  get refused(): Readonly<Record<KvRefusalReason, number>> {
    return { ...this.refusedBy };
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
      refused: this.refused,
      early,
      failures: { ...this.ledger.counts },
    };
  }

  /** The Prometheus families of a rank (`snap` is its `metrics()`, with holds or expectations). */
  families(snap: KvMetricsSnapshot, rank: { side: 'prefill' | 'decode'; engine: string }): MetricFamily[] {
    const l: Labels = { side: rank.side, engine: rank.engine };
    const dirs = DIRECTIONS.flatMap((direction) => {
      const d = this.byDirection.get(direction);
      return d ? [{ labels: { ...l, direction }, d }] : [];
    });
    const holds = snap.holds;
    const byStage = (r: Readonly<Record<string, number>>): [Labels, number][] => Object.entries(r).map(([stage, v]) => [{ ...l, stage }, v]);
    const byReason = (r: Readonly<Record<string, number>>): [Labels, number][] => Object.entries(r).map(([reason, v]) => [{ ...l, reason }, v]);
    return [
      counter('mooncake_kv_transfers_total', 'Requests whose blocks were moved (read: pulled by the consumer; write: pushed by the producer; receive: pushes the consumer got), by result.',
        dirs.flatMap(({ labels, d }) => [[{ ...labels, result: 'ok' }, d.ok], [{ ...labels, result: 'failed' }, d.failed]] as [Labels, number][])),
      counter('mooncake_kv_transfers_started_total', 'Requests whose transfer started.', [[l, this.started]]),
      gauge('mooncake_kv_transfers_in_flight', 'Requests being transferred.', [[l, snap.transfers.inFlight]]),
      counter('mooncake_kv_bytes_total', 'Bytes of KV moved, by direction.', dirs.map(({ labels, d }) => [labels, d.bytes])),
      counter('mooncake_kv_failed_blocks_total', 'Blocks that did not arrive (to be recomputed), by direction.', dirs.map(({ labels, d }) => [labels, d.failedBlocks])),
      counter('mooncake_kv_stale_blocks_total', 'Blocks a pull read while their producer no longer (or not yet) held them (STALE_KV; also failed).', [[l, this.staleBlocks]]),
      histogram('mooncake_kv_transfer_duration_seconds', 'Time to move one request\'s blocks on this rank, by direction.', dirs.map(({ labels, d }) => d.duration.sample(labels))),
      counter('mooncake_kv_notifies_sent_total', 'Completion messages sent to peers.', [[l, this.notifiesSent]]),
      counter('mooncake_kv_notify_send_failures_total', 'Completion messages that could not be sent.', [[l, this.notifiesFailed]]),
      counter('mooncake_kv_notifies_received_total', 'Completion messages received.', [[l, this.notifiesReceived]]),
      counter('mooncake_kv_malformed_messages_total', 'Messages from peers that were not understood (ignored).', [[l, this.malformed]]),
      counter('mooncake_kv_failures_total', 'Failures in the failure ledger, by stage (BOOTSTRAP, REGISTRATION, SEND, RECV, NOTIFY, TIMEOUT, ABORT).', byStage(this.ledger.counts)),
      counter('mooncake_kv_refused_messages_total', 'KV messages refused, by reason (early-full: the early-message buffer was full).', byReason(this.refusedBy)),
      gauge('mooncake_kv_early_messages', 'Messages kept for requests not held or expected yet.', [[l, snap.early.held]]),
      gauge('mooncake_kv_early_message_bytes', 'Bytes of those messages.', [[l, snap.early.bytes]]),
      counter('mooncake_kv_early_messages_expired_total', 'Early messages dropped because their request never came in time.', [[l, snap.early.expired]]),
      gauge('mooncake_kv_holds', 'Requests whose blocks the producer holds for consumers.', holds ? [[l, holds.active]] : []),
      counter('mooncake_kv_holds_released_total', 'Holds ended, by reason (abort-timeout: freed by force after no consumer finished in time).', holds ? byReason(holds.released) : []),
      counter('mooncake_kv_late_done_total', 'Completion messages for requests already released.', holds ? [[l, holds.lateDone]] : []),
      gauge('mooncake_kv_expectations', 'Pushes the consumer waits for.', snap.expectations ? [[l, snap.expectations.active]] : []),
    ];
  }

  private sum(f: (d: PerDirection) => number): number {
    let n = 0;
    for (const d of this.byDirection.values()) n += f(d);
    return n;
  }
}
