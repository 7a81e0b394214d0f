/**
 * Received notifies, offered three ways:
 *
 * - `on('notify', fn)`: every accepted notify is announced to listeners as it arrives (listeners
 *   observe, they do not consume);
 * - `drain()`: takes everything buffered, oldest first, and empties the buffer. This is upstream's
 *   `getNotifies()` (TransferMetadata keeps a list that each call moves out);
 * - `for await (const n of queue)` / `queue.iterate({ signal })`: consumers that take notifies from
 *   the same buffer, waiting when it is empty. With several iterators (or an iterator and
 *   `drain()`), each notify goes to exactly one of them.
 *
 * The buffer is bounded by entries (`capacity`, default 4096) **and by bytes** (`maxBytes`, default
 * 64 MiB, counted as the UTF-8 bytes of name and message), and a single notify larger than
 * `maxMessageBytes` (default 1 MiB) is refused. A peer can therefore never make the process keep more
 * than `maxBytes` of notifies, whether or not anybody drains them (upstream's list is unbounded: an
 * application that only listens to events would keep every notify ever sent to it).
 *
 * When the buffer is full, `whenFull` decides:
 * - `'drop-oldest'` (default): the oldest buffered notifies are discarded to make room, `dropped`
 *   counts them and an 'overflow' event carries each one. Every notify has been announced to the
 *   'notify' listeners before it can be discarded, so an application that uses events loses nothing;
 * - `'reject'`: the new notify is refused (`push()` returns false, the handshake daemon answers with
 *   upstream's rejection so the sender's `sendNotify` fails), `rejected` counts it and a 'reject'
 *   event says why. Nothing acknowledged is ever discarded.
 *
 * `push()` returns whether the notify was accepted; the handshake daemon acknowledges only accepted
 * notifies, so an acknowledged notify has been announced (and queued, unless `capacity` is 0).
 * `capacity: 0` keeps nothing (events only).
 *
 * `claim(name, handler)`: notifies of that name are a layer's own messages (the KV layer's): they go to
 * the handler instead of the buffer. The handler accepts (true) or refuses (false: `push()` returns false,
 * 'reject' with reason 'refused', so the sender is told); an accepted one is announced to 'notify'
 * listeners like any other, and never kept for `drain()` / iterators, so it cannot crowd out the
 * application's notifies nor wait for a drain that never comes.
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
  /** Most bytes (UTF-8 of name + message) kept for `drain()`/iterators (default 64 MiB). */
  maxBytes?: number;
  /** Largest single notify accepted, in bytes (default 1 MiB); larger ones are refused. */
  maxMessageBytes?: number;
  /** What a full buffer does with a new notify (default 'drop-oldest'; see the module comment). */
  whenFull?: 'drop-oldest' | 'reject';
}

/** Why a notify was refused ('refused': the handler that claimed its name refused it). */
export type NotifyRejectReason = 'too-large' | 'full' | 'closed' | 'refused';

/** Takes the notifies of a claimed name (see `claim`); false refuses one. */
export type NotifyHandler = (n: Notify) => boolean;

export interface NotifyRejectInfo {
  reason: NotifyRejectReason;
  /** The refused notify's name (its message is not kept). */
  name: string;
  /** Its size in bytes (UTF-8 of name + message). */
  bytes: number;
}

export interface NotificationQueueEvents {
  notify: [Notify];
  overflow: [Notify];
  reject: [NotifyRejectInfo];
}

interface Waiter {
  resolve: (r: IteratorResult<Notify>) => void;
  reject: (e: unknown) => void;
  owner: object | undefined;
}

export const DEFAULT_NOTIFY_CAPACITY = 4096;
export const DEFAULT_NOTIFY_MAX_BYTES = 64 * 1024 * 1024;
export const DEFAULT_NOTIFY_MAX_MESSAGE_BYTES = 1024 * 1024;

/** The bytes a notify is counted as: the UTF-8 of its name and message. */
export function notifyBytes(n: Notify): number {
  return Buffer.byteLength(n.name, 'utf8') + Buffer.byteLength(n.msg, 'utf8');
}

export class NotificationQueue extends EventEmitter<NotificationQueueEvents> {
  readonly capacity: number;
  readonly maxBytes: number;
  readonly maxMessageBytes: number;
  readonly whenFull: 'drop-oldest' | 'reject';
  /** Buffered notifies from `head` on; slots before it are cleared so taken notifies can be collected. */
  private buf: (Notify | undefined)[] = [];
  /** Byte size of each buffered notify, parallel to `buf`. */
  private sizes: number[] = [];
  private head = 0;
  private bufferedBytes = 0;
  private waiters: Waiter[] = [];
  private readonly claims = new Map<string, NotifyHandler>();
  private closed = false;
  private droppedCount = 0;
  private rejectedCount = 0;
  private receivedCount = 0;

  constructor(options: NotificationQueueOptions = {}) {
    super();
    this.capacity = nonNegativeInt('capacity', options.capacity ?? DEFAULT_NOTIFY_CAPACITY);
    this.maxBytes = nonNegativeInt('maxBytes', options.maxBytes ?? DEFAULT_NOTIFY_MAX_BYTES);
    this.maxMessageBytes = nonNegativeInt('maxMessageBytes', options.maxMessageBytes ?? DEFAULT_NOTIFY_MAX_MESSAGE_BYTES);
    const whenFull = options.whenFull ?? 'drop-oldest';
    if (whenFull !== 'drop-oldest' && whenFull !== 'reject') {
      throw new MooncakeError('INVALID_ARGUMENT', `whenFull must be 'drop-oldest' or 'reject', got ${String(whenFull)}`);
    }
    this.whenFull = whenFull;
  }

  /** Notifies buffered now. */
  get size(): number {
    return this.buf.length - this.head;
  }
  /** Bytes buffered now (bounded by `maxBytes`). */
  get bytes(): number {
    return this.bufferedBytes;
  }
  /** Notifies discarded from a full buffer ('drop-oldest'). */
  get dropped(): number {
    return this.droppedCount;
  }
  /** Notifies refused: too large, the buffer full ('reject'), or after `close()`. */
  get rejected(): number {
    return this.rejectedCount;
  }
  /** Notifies accepted since creation. */
  get received(): number {
    return this.receivedCount;
  }
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Offers a notify (the handshake server's `onNotify`). Returns true when it was accepted (announced
   * to 'notify' listeners, and buffered or handed to a waiting iterator), false when it was refused
   * (too large, the buffer full under 'reject', or the queue closed).
   */
  push(n: Notify): boolean {
    const item: Notify = { name: n.name, msg: n.msg };
    const size = notifyBytes(item);
    if (this.closed) return this.refuse('closed', item, size);
    if (size > this.maxMessageBytes) return this.refuse('too-large', item, size);
    const claim = this.claims.get(item.name);
    if (claim) {
      let ok = false;
      try {
        ok = claim(item) !== false;
      } catch {
        ok = false;
      }
      if (!ok) return this.refuse('refused', item, size);
      this.receivedCount++;
      this.emit('notify', item);
      return true;
    }
    const full = this.size >= this.capacity || this.bufferedBytes + size > this.maxBytes;
    // A waiting iterator takes it at once, so it needs no room; 'reject' refuses only what must be kept.
    if (this.waiters.length === 0 && this.capacity > 0 && this.whenFull === 'reject' && full) {
      return this.refuse('full', item, size);
    }
    this.receivedCount++;
    this.emit('notify', item);
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: item, done: false });
      return true;
    }
    if (this.capacity === 0 || size > this.maxBytes) {
      this.droppedCount++;
      this.emit('overflow', item);
      return true;
    }
    while (this.size > 0 && (this.size >= this.capacity || this.bufferedBytes + size > this.maxBytes)) {
      const old = this.takeHead();
      this.droppedCount++;
      this.emit('overflow', old);
    }
    this.buf.push(item);
    this.sizes.push(size);
    this.bufferedBytes += size;
    if (this.head > 64 && this.head * 2 > this.buf.length) {
      this.buf = this.buf.slice(this.head);
      this.sizes = this.sizes.slice(this.head);
      this.head = 0;
    }
    return true;
  }

  private refuse(reason: NotifyRejectReason, n: Notify, bytes: number): false {
    this.rejectedCount++;
    this.emit('reject', { reason, name: n.name, bytes });
    return false;
  }

  private takeHead(): Notify {
    const n = this.buf[this.head]!;
    this.buf[this.head] = undefined; // a dropped or taken notify must not stay reachable from here
    this.bufferedBytes -= this.sizes[this.head]!;
    this.head++;
    if (this.head === this.buf.length) {
      this.buf = [];
      this.sizes = [];
      this.head = 0;
    }
    return n;
  }

  /**
   * Notifies named `name` go to `handler` instead of the buffer (see the module comment). One handler
   * per name: INVALID_ARGUMENT if the name is claimed already. Returns the function that ends the claim.
   */
  claim(name: string, handler: NotifyHandler): () => void {
    if (typeof name !== 'string' || name === '' || typeof handler !== 'function') {
      throw new MooncakeError('INVALID_ARGUMENT', 'claim needs a non-empty notify name and a handler');
    }
    if (this.claims.has(name)) throw new MooncakeError('INVALID_ARGUMENT', `notifies named '${name}' are claimed already`, { details: { name } });
    this.claims.set(name, handler);
    return () => {
      if (this.claims.get(name) === handler) this.claims.delete(name);
    };
  }

  /** Everything buffered, oldest first; the buffer is left empty (upstream `getNotifies()`). */
  drain(): Notify[] {
    const out = (this.head === 0 ? this.buf : this.buf.slice(this.head)) as Notify[];
    this.buf = [];
    this.sizes = [];
    this.head = 0;
    this.bufferedBytes = 0;
    return out;
  }

  /** Takes the oldest buffered notify, if any. */
  shift(): Notify | undefined {
    return this.size === 0 ? undefined : this.takeHead();
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

function nonNegativeInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new MooncakeError('INVALID_ARGUMENT', `${name} must be a non-negative integer, got ${String(v)}`);
  return v;
}

function abortError(signal: AbortSignal): MooncakeError {
  return new MooncakeError('ABORT_ERR', 'waiting for a notify was aborted', { cause: signal.reason });
}
