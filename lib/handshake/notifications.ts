/**
 * Received notifies, offered three ways:
 *
 * - `on('notify', fn)`: every notify is announced to listeners as it arrives (listeners observe,
 *   they do not consume);
 * - `drain()`: takes everything buffered, oldest first, and empties the buffer. This is upstream's
 *   `getNotifies()` (TransferMetadata keeps a list that each call moves out);
 * - `for await (const n of queue)` / `queue.iterate({ signal })`: consumers that take notifies from
 *   the same buffer, waiting when it is empty. With several iterators (or an iterator and
 *   `drain()`), each notify goes to exactly one of them.
 *
 * The buffer is bounded (`capacity`, default 4096 entries) and never pushes back on the sender:
 * upstream's daemon answers "success" before anybody reads the list, so there is nothing to push
 * back on. When nobody drains and the buffer is full, the **oldest** buffered notify is discarded
 * to make room, `dropped` is incremented and an 'overflow' event carries the discarded notify.
 * `capacity: 0` keeps nothing (events only). Upstream's list is unbounded.
 */

import { EventEmitter } from 'node:events';
import { MooncakeError } from '../errors';

export interface Notify {
  /** Upstream `TransferNotify.name` / `NotifyDesc.name`. */
  name: string;
  /** Upstream `TransferNotify.msg` / `NotifyDesc.notify_msg`. */
  msg: string;
}

export interface NotificationQueueOptions {
  /** Most notifies kept for `drain()`/iterators (default 4096; 0 = keep none). */
  capacity?: number;
}

export interface NotificationQueueEvents {
  notify: [Notify];
  overflow: [Notify];
}

interface Waiter {
  resolve: (r: IteratorResult<Notify>) => void;
  reject: (e: unknown) => void;
  owner: object | undefined;
}

export const DEFAULT_NOTIFY_CAPACITY = 4096;

export class NotificationQueue extends EventEmitter<NotificationQueueEvents> {
  readonly capacity: number;
  private buf: Notify[] = [];
  private head = 0;
  private waiters: Waiter[] = [];
  private closed = false;
  private droppedCount = 0;
  private receivedCount = 0;

  constructor(options: NotificationQueueOptions = {}) {
    super();
    const cap = options.capacity ?? DEFAULT_NOTIFY_CAPACITY;
    if (!Number.isSafeInteger(cap) || cap < 0) throw new MooncakeError('INVALID_ARGUMENT', `capacity must be a non-negative integer, got ${cap}`);
    this.capacity = cap;
  }

  /** Notifies buffered now. */
  get size(): number {
    return this.buf.length - this.head;
  }
  /** Notifies discarded because the buffer was full. */
  get dropped(): number {
    return this.droppedCount;
  }
  /** Notifies pushed since creation. */
  get received(): number {
    return this.receivedCount;
  }
  get isClosed(): boolean {
    return this.closed;
  }

  /** Adds a notify (the handshake server's `onNotify`). Ignored after `close()`. */
  push(n: Notify): void {
    if (this.closed) return;
    const item: Notify = { name: n.name, msg: n.msg };
    this.receivedCount++;
    this.emit('notify', item);
    const w = this.waiters.shift();
    if (w) {
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.capacity === 0) {
      this.droppedCount++;
      this.emit('overflow', item);
      return;
    }
    if (this.size >= this.capacity) {
      const old = this.buf[this.head]!;
      this.head++;
      this.droppedCount++;
      this.emit('overflow', old);
    }
    this.buf.push(item);
    if (this.head > 1024 && this.head * 2 > this.buf.length) {
      this.buf = this.buf.slice(this.head);
      this.head = 0;
    }
  }

  /** Everything buffered, oldest first; the buffer is left empty (upstream `getNotifies()`). */
  drain(): Notify[] {
    const out = this.head === 0 ? this.buf : this.buf.slice(this.head);
    this.buf = [];
    this.head = 0;
    return out;
  }

  /** Takes the oldest buffered notify, if any. */
  shift(): Notify | undefined {
    if (this.size === 0) return undefined;
    const n = this.buf[this.head]!;
    this.head++;
    if (this.head === this.buf.length) {
      this.buf = [];
      this.head = 0;
    }
    return n;
  }

  /** Resolves with the next notify (buffered or future). Rejects if closed first or aborted. */
  next(signal?: AbortSignal): Promise<IteratorResult<Notify>> {
    return this.wait(signal, undefined);
  }

  private wait(signal: AbortSignal | undefined, owner: object | undefined): Promise<IteratorResult<Notify>> {
    const n = this.shift();
    if (n) return Promise.resolve({ value: n, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      const w: Waiter = { resolve, reject, owner };
      if (signal) {
        const onAbort = (): void => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(abortError(signal));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        w.resolve = (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        };
      }
      this.waiters.push(w);
    });
  }

  /** An async iterator over notifies; ends on `close()`, rejects with an AbortError on `signal`. */
  iterate(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<Notify> {
    const { signal } = options;
    let finished = false;
    const owner = {};
    const it: AsyncIterableIterator<Notify> = {
      next: () => (finished ? Promise.resolve({ value: undefined, done: true }) : this.wait(signal, owner)),
      return: () => {
        finished = true;
        // A next() still pending must not swallow a later notify.
        const mine = this.waiters.filter((w) => w.owner === owner);
        this.waiters = this.waiters.filter((w) => w.owner !== owner);
        for (const w of mine) w.resolve({ value: undefined, done: true });
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Notify> {
    return this.iterate();
  }

  /** Ends every iterator (after the buffer is consumed) and ignores later pushes. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.resolve({ value: undefined, done: true });
  }
}

function abortError(signal: AbortSignal): MooncakeError {
  return new MooncakeError('ABORT_ERR', 'waiting for a notify was aborted', { cause: signal.reason });
}
