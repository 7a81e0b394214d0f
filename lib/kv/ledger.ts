/**
 * The failure ledger: where in a transfer each failure of a request came from, in the spirit of vLLM's
 * Mooncake failure ledger, so the caller (a serving stack, a proxy) can decide to recompute the blocks or
 * re-route the request. Every failed KvTransferOutcome carries its records (`outcome.failures`), every record
 * is also emitted as a 'failure' event by the KvProducer/KvConsumer that saw it, and `takeFailures()` drains
 * the last ones (bounded), as vLLM's scheduler drains its ledger each step.
 *
 * Stages, in transfer order:
 * - BOOTSTRAP     finding the peer rank: a registry lookup, a vLLM bootstrap query, a GET_META, or waiting for
 *                 the decode's transfer request (vLLM) failed or timed out;
 * - REGISTRATION  the peer's registered KV memory does not fit this rank's (layout, block lengths, tensor
 *                 count, tp size): nothing was moved;
 * - SEND          the writing side failed: this producer's write, or the remote producer reported the request
 *                 failed (vLLM's err_reqs, vllm-ascend's failed_sending_msg);
 * - RECV          the receiving side failed: this consumer's read, or the producer vanished while this rank
 *                 waited for its answer;
 * - NOTIFY        a completion signal (done, push_done, a transfer response) could not be delivered: the peer
 *                 keeps its blocks until its own timeout;
 * - TIMEOUT       no outcome within the deadline (a transfer timeout, a push never announced, a hold
 *                 force-freed after abortTimeoutMs): vLLM's WATCHDOG;
 * - ABORT         the caller cancelled (AbortSignal, cancel(), close()).
 */
import type { ErrorCode, MooncakeError } from '../errors';
import type { KvSideChannelName } from './side-channel';

export const KV_FAILURE_STAGES = ['BOOTSTRAP', 'REGISTRATION', 'SEND', 'RECV', 'NOTIFY', 'TIMEOUT', 'ABORT'] as const;
export type KvFailureStage = (typeof KV_FAILURE_STAGES)[number];

/**
 * What the record suggests: 'reroute' when the peer instance looks gone or unreachable (send the request to
 * another prefill/decode pair), 'recompute' when the peer is there but these blocks did not arrive (recompute
 * them where the request is, or retry the transfer).
 */
export type KvFailureAdvice = 'recompute' | 'reroute';

export interface KvFailureRecord {
  requestId: string;
  stage: KvFailureStage;
  /** The MooncakeError code behind it. */
  code: ErrorCode;
  detail: string;
  advice: KvFailureAdvice;
  /** Which rank saw it, and with which side channel. */
  side: 'prefill' | 'decode';
  sideChannel: KvSideChannelName;
  /** The peer rank involved, when known. */
  peer?: { engineId: string; dpRank: number; tpRank: number };
  /** This rank's block ids the failure spoils (empty for NOTIFY: nothing of ours is lost). */
  blockIds: number[];
  /** Date.now() when recorded. */
  at: number;
}

/** Codes that mean the peer itself is gone or unreachable (rather than one transfer going wrong). */
const PEER_GONE: ReadonlySet<string> = new Set(['CONNECT_FAILED', 'CONNECTION_LOST', 'SEGMENT_NOT_FOUND', 'CLOSED']);

/**
 * The stage of a transfer failure from its error and where it happened: `phase` is what the rank was doing
 * ('lookup' finding the peer, 'plan' fitting its memory, 'transfer' moving bytes, 'wait' waiting for the
 * other side). A TIMEOUT or ABORT code wins over the phase.
 */
export function failureStage(error: MooncakeError, phase: 'lookup' | 'plan' | 'transfer' | 'wait', writer: 'local' | 'remote'): KvFailureStage {
  if (error.code === 'ABORT_ERR') return 'ABORT';
  if (error.code === 'TIMEOUT') return phase === 'lookup' ? 'BOOTSTRAP' : 'TIMEOUT';
  if (phase === 'lookup') return 'BOOTSTRAP';
  if (phase === 'plan' || error.code === 'INVALID_CONFIG') return 'REGISTRATION';
  if (phase === 'wait') return error.code === 'REMOTE_REJECTED' ? 'SEND' : 'RECV';
  return writer === 'local' ? 'SEND' : 'RECV';
}

export function failureAdvice(stage: KvFailureStage, code: ErrorCode): KvFailureAdvice {
  if (stage === 'BOOTSTRAP' || PEER_GONE.has(code)) return 'reroute';
  return 'recompute';
}

/** The last failures of one rank, for `takeFailures()`, and counts per stage for `metrics()`. */
export class KvFailureLedger {
  private records: KvFailureRecord[] = [];
  readonly counts: Record<KvFailureStage, number> = { BOOTSTRAP: 0, REGISTRATION: 0, SEND: 0, RECV: 0, NOTIFY: 0, TIMEOUT: 0, ABORT: 0 };

  constructor(private readonly max = 1024) {}

  add(r: KvFailureRecord): void {
    this.counts[r.stage]++;
    this.records.push(r);
    if (this.records.length > this.max) this.records.splice(0, this.records.length - this.max);
  }

  /** Drains the records kept so far (oldest first). */
  take(): KvFailureRecord[] {
    const out = this.records;
    this.records = [];
    return out;
  }
}
