/**
 * The prefill side of vLLM's MooncakeConnector side channel: the transfer requests decode ranks sent to this
 * rank's ROUTER, kept until the producer pushes them (KvProducer.push finds them through the channel's
 * `lookup`) or until `abortTimeoutMs` passes, and answered as vLLM's prefill answers: per decode request,
 * `ok_reqs` or `err_reqs`, CONTINUE while other requests of the same message are pending, FINISH with the last.
 *
 * Everything a decode can make this rank keep is bounded: requests per message, pending requests overall,
 * the time each is kept, and the finished transfer ids remembered to fail late requests at once.
 */
import { MooncakeError } from '../../errors';
import type { StreamRouter } from '../zmq/stream';
import { encodeXferResponse, XFER_STATUS, type XferMetadata } from './wire';

/** Pending requests kept at the most (each holds one decode rank's regions by reference). */
const MAX_PENDING = 10_000;
/** Finished transfer ids remembered, to answer a late request at once. */
const MAX_FINISHED = 10_000;

/** One decode rank's request for one transfer. */
export interface Pull {
  transferId: string;
  decodeRequestId: string;
  decodeRank: number;
  meta: XferMetadata;
  /** The decode's block ids (its one KV-cache group; empty: it only lets the prefill free its blocks). */
  blockIds: number[];
  exchange: Exchange;
  timer: NodeJS.Timeout | undefined;
  answered: boolean;
}

/** One request message (one DEALER identity), answered once per decode request it lists. */
interface Exchange {
  identity: Buffer;
  pending: Set<string>;
  layoutId: bigint;
}

export class PullBook {
  private readonly pulls = new Map<string, Map<number, Pull>>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly finished = new Map<string, number>();
  private size = 0;
  private closed = false;

  constructor(private readonly router: () => StreamRouter | undefined, private readonly abortTimeoutMs: number) {}

  /** Answers a whole message with one response (ERROR, LAYOUT_MISS: nothing of it is kept). */
  reject(identity: Buffer, status: typeof XFER_STATUS.ERROR | typeof XFER_STATUS.LAYOUT_MISS, errMsg: string): Promise<boolean> {
    return this.router()?.send(identity, encodeXferResponse({ status, errMsg })) ?? Promise.resolve(false);
  }

  /**
   * Keeps the requests of one message. `problem(transferId, groups)` says why one cannot be served (then it
   * is answered in err_reqs at once). Requests for a transfer this rank already finished are answered
   * expired, as vLLM does.
   */
  accept(identity: Buffer, meta: XferMetadata, problem: (transferId: string, groups: number[][]) => string | undefined): void {
    const exchange: Exchange = { identity, pending: new Set(), layoutId: meta.layoutId };
    const rejected: { id: string; why: string }[] = [];
    for (const [decodeRequestId, { transferId, groups }] of meta.reqBlocks) {
      const why = this.closed
        ? 'the prefill rank is closing'
        : this.finished.has(transferId)
          ? 'KV expired on P side before the pull.'
          : this.size >= MAX_PENDING
            ? `the prefill rank holds ${MAX_PENDING} pending requests`
            : problem(transferId, groups);
      if (why !== undefined || this.pulls.get(transferId)?.has(meta.tpRank)) {
        rejected.push({ id: decodeRequestId, why: why ?? `decode rank ${meta.tpRank} already asked for ${transferId}` });
        continue;
      }
      const pull: Pull = { transferId, decodeRequestId, decodeRank: meta.tpRank, meta, blockIds: groups.find((g) => g.length > 0) ?? [], exchange, timer: undefined, answered: false };
      pull.timer = setTimeout(() => {
        // The prefill never pushed: the decode is told, and a push that comes later fails at once.
        this.finish(transferId);
        void this.answer(pull, false, 'Timeout waiting for P side ready.');
      }, this.abortTimeoutMs);
      pull.timer.unref();
      exchange.pending.add(decodeRequestId);
      const byRank = this.pulls.get(transferId) ?? new Map<number, Pull>();
      byRank.set(meta.tpRank, pull);
      this.pulls.set(transferId, byRank);
      this.size++;
    }
    if (rejected.length > 0) {
      void this.router()?.send(identity, encodeXferResponse({
        status: exchange.pending.size > 0 ? XFER_STATUS.CONTINUE : XFER_STATUS.FINISH,
        errReqs: rejected.map((r) => r.id),
        errMsg: rejected[0].why,
        layoutId: meta.layoutId,
      }));
    }
    for (const transferId of new Set([...meta.reqBlocks.values()].map((r) => r.transferId))) {
      for (const wake of this.waiters.get(transferId) ?? []) wake();
    }
  }

  /** A pending request of `transferId` (from `decodeRank`, or any), or undefined. */
  find(transferId: string, decodeRank?: number): Pull | undefined {
    const byRank = this.pulls.get(transferId);
    if (!byRank) return undefined;
    return decodeRank === undefined ? byRank.values().next().value : byRank.get(decodeRank);
  }

  /**
   * Waits until a decode rank (`decodeRank`, or any) asks for `transferId`: TIMEOUT after `timeoutMs`
   * (BOOTSTRAP in the ledger: the decode never asked), ABORT_ERR, or CLOSED.
   */
  wait(transferId: string, decodeRank: number | undefined, timeoutMs: number, signal?: AbortSignal): Promise<Pull> {
    const now = this.find(transferId, decodeRank);
    if (now) return Promise.resolve(now);
    if (this.closed) return Promise.reject(new MooncakeError('CLOSED', 'the side channel is closed'));
    if (this.finished.has(transferId)) return Promise.reject(new MooncakeError('INVALID_ARGUMENT', `transfer ${transferId} was already pushed or expired`));
    return new Promise((resolve, reject) => {
      const set = this.waiters.get(transferId) ?? new Set<() => void>();
      this.waiters.set(transferId, set);
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        set.delete(check);
        if (set.size === 0) this.waiters.delete(transferId);
      };
      const check = (): void => {
        if (this.closed) {
          done();
          reject(new MooncakeError('CLOSED', 'the side channel is closed'));
          return;
        }
        const p = this.find(transferId, decodeRank);
        if (p) {
          done();
          resolve(p);
        }
      };
      const onAbort = (): void => {
        done();
        reject(new MooncakeError('ABORT_ERR', `waiting for the decode's request for ${transferId} was aborted`));
      };
      const who = decodeRank === undefined ? 'any decode rank' : `decode rank ${decodeRank}`;
      const timer = setTimeout(() => {
        done();
        reject(new MooncakeError('TIMEOUT', `${who} did not ask for transfer ${transferId} within ${timeoutMs} ms`, { details: { transferId } }));
      }, timeoutMs);
      timer.unref();
      signal?.addEventListener('abort', onAbort, { once: true });
      set.add(check);
    });
  }

  /**
   * Answers one decode request: ok_reqs or err_reqs, CONTINUE while its message has others pending, else
   * FINISH. Resolves false when it could not be delivered (the decode is gone). Idempotent per request.
   */
  async answer(pull: Pull, ok: boolean, errMsg?: string): Promise<boolean> {
    if (pull.answered) return false;
    pull.answered = true;
    if (pull.timer) clearTimeout(pull.timer);
    const byRank = this.pulls.get(pull.transferId);
    if (byRank?.get(pull.decodeRank) === pull) {
      byRank.delete(pull.decodeRank);
      this.size--;
      if (byRank.size === 0) this.pulls.delete(pull.transferId);
    }
    const ex = pull.exchange;
    ex.pending.delete(pull.decodeRequestId);
    const status = ex.pending.size > 0 ? XFER_STATUS.CONTINUE : XFER_STATUS.FINISH;
    const reply = ok
      ? encodeXferResponse({ status, okReqs: [pull.decodeRequestId], layoutId: ex.layoutId })
      : encodeXferResponse({ status, errReqs: [pull.decodeRequestId], errMsg: errMsg ?? 'transfer failed on P side', layoutId: ex.layoutId });
    return (await this.router()?.send(ex.identity, reply)) ?? false;
  }

  /** Remembers that `transferId` is over: later requests for it are answered expired. */
  finish(transferId: string): void {
    this.finished.set(transferId, Date.now());
    if (this.finished.size > MAX_FINISHED) this.finished.delete(this.finished.keys().next().value as string);
  }

  /** Answers every pending request with an error and wakes every waiter (CLOSED). */
  async close(reason: string): Promise<void> {
    this.closed = true;
    const all = [...this.pulls.values()].flatMap((m) => [...m.values()]);
    await Promise.all(all.map((p) => this.answer(p, false, reason)));
    for (const set of [...this.waiters.values()]) for (const wake of [...set]) wake();
  }
}
