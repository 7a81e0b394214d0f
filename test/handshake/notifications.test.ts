import { describe, expect, it } from 'vitest';
import { isMooncakeError } from '../../lib/errors';
import { NotificationQueue, type Notify } from '../../lib/handshake/notifications';

const n = (i: number): Notify => ({ name: `n${i}`, msg: `m${i}` });

describe('NotificationQueue', () => {
  it('drain() returns everything oldest first and empties the buffer (upstream getNotifies)', () => {
    const q = new NotificationQueue();
    expect(q.drain()).toEqual([]);
    q.push(n(1));
    q.push(n(2));
    expect(q.size).toBe(2);
    expect(q.drain()).toEqual([n(1), n(2)]);
    expect(q.drain()).toEqual([]);
    expect(q.received).toBe(2);
  });

  it("announces every notify to 'notify' listeners, which do not consume it", () => {
    const q = new NotificationQueue();
    const seen: Notify[] = [];
    q.on('notify', (x) => seen.push(x));
    q.push(n(1));
    expect(seen).toEqual([n(1)]);
    expect(q.drain()).toEqual([n(1)]);
  });

  it('keeps the newest `capacity` when nobody drains, counting and announcing the discarded', () => {
    const q = new NotificationQueue({ capacity: 3 });
    const over: Notify[] = [];
    q.on('overflow', (x) => over.push(x));
    for (let i = 1; i <= 5; i++) q.push(n(i));
    expect(q.dropped).toBe(2);
    expect(over).toEqual([n(1), n(2)]);
    expect(q.drain()).toEqual([n(3), n(4), n(5)]);
  });

  it('capacity 0 keeps nothing but still emits', () => {
    const q = new NotificationQueue({ capacity: 0 });
    const seen: Notify[] = [];
    q.on('notify', (x) => seen.push(x));
    q.push(n(1));
    expect(seen).toHaveLength(1);
    expect(q.drain()).toEqual([]);
    expect(q.dropped).toBe(1);
  });

  it('stays bounded over many pushes', () => {
    const q = new NotificationQueue({ capacity: 10 });
    for (let i = 0; i < 100_000; i++) q.push(n(i));
    expect(q.size).toBe(10);
    expect(q.drain()[0]).toEqual(n(99_990));
  });

  it('async iteration takes buffered notifies, then waits for new ones, and ends on close()', async () => {
    const q = new NotificationQueue();
    q.push(n(1));
    const got: Notify[] = [];
    const done = (async () => {
      for await (const x of q) got.push(x);
    })();
    await new Promise((r) => setImmediate(r));
    q.push(n(2));
    q.push(n(3));
    await new Promise((r) => setImmediate(r));
    q.close();
    await done;
    expect(got).toEqual([n(1), n(2), n(3)]);
    expect(q.drain()).toEqual([]); // consumed by the iterator
    q.push(n(4)); // ignored after close
    expect(q.size).toBe(0);
  });

  it('gives each notify to exactly one of several consumers', async () => {
    const q = new NotificationQueue();
    const a = q.iterate();
    const b = q.iterate();
    const pa = a.next();
    const pb = b.next();
    q.push(n(1));
    q.push(n(2));
    q.push(n(3));
    const [ra, rb] = await Promise.all([pa, pb]);
    expect([ra.value, rb.value]).toEqual([n(1), n(2)]);
    expect(q.drain()).toEqual([n(3)]);
  });

  it('return() on an iterator releases its pending wait without swallowing a later notify', async () => {
    const q = new NotificationQueue();
    const it = q.iterate();
    const pending = it.next();
    await it.return!();
    expect(await pending).toEqual({ value: undefined, done: true });
    q.push(n(1));
    expect(q.drain()).toEqual([n(1)]);
  });

  it('an aborted wait rejects with ABORT_ERR and does not consume', async () => {
    const q = new NotificationQueue();
    const ac = new AbortController();
    const it = q.iterate({ signal: ac.signal });
    const p = it.next();
    ac.abort();
    const err = await p.catch((e: unknown) => e);
    expect(isMooncakeError(err, 'ABORT_ERR')).toBe(true);
    q.push(n(1));
    expect(q.drain()).toEqual([n(1)]);
    await expect(q.next(ac.signal)).rejects.toMatchObject({ code: 'ABORT_ERR' });
  });

  it('refuses a negative capacity', () => {
    expect(() => new NotificationQueue({ capacity: -1 })).toThrow(/capacity/);
    expect(() => new NotificationQueue({ maxBytes: -1 })).toThrow(/maxBytes/);
    expect(() => new NotificationQueue({ maxMessageBytes: 1.5 })).toThrow(/maxMessageBytes/);
    expect(() => new NotificationQueue({ whenFull: 'block' as never })).toThrow(/whenFull/);
  });
});

describe('NotificationQueue: bounded by bytes', () => {
  const big = (i: number, kib: number): Notify => ({ name: `b${i}`, msg: 'x'.repeat(kib * 1024 - `b${i}`.length) });

  it('keeps at most maxBytes (UTF-8 of name + message), dropping the oldest and counting them', () => {
    const q = new NotificationQueue({ maxBytes: 10 * 1024 });
    const over: Notify[] = [];
    q.on('overflow', (x) => over.push(x));
    for (let i = 0; i < 25; i++) expect(q.push(big(i, 1))).toBe(true);
    expect(q.bytes).toBe(10 * 1024);
    expect(q.size).toBe(10);
    expect(q.dropped).toBe(15);
    expect(over.map((x) => x.name)).toEqual(Array.from({ length: 15 }, (_, i) => `b${i}`));
    expect(q.drain().map((x) => x.name)).toEqual(Array.from({ length: 10 }, (_, i) => `b${i + 15}`));
    expect(q.bytes).toBe(0);
    // Multi-byte characters count as their UTF-8 bytes.
    q.push({ name: 'é', msg: '€' });
    expect(q.bytes).toBe(2 + 3);
    expect(q.shift()).toEqual({ name: 'é', msg: '€' });
    expect(q.bytes).toBe(0);
  });

  it('refuses a notify larger than maxMessageBytes without announcing or keeping it', () => {
    const q = new NotificationQueue({ maxMessageBytes: 4096 });
    const seen: Notify[] = [];
    const rejected: unknown[] = [];
    q.on('notify', (x) => seen.push(x));
    q.on('reject', (r) => rejected.push(r));
    expect(q.push(big(1, 5))).toBe(false);
    expect(q.push(big(2, 4))).toBe(true);
    expect(seen.map((x) => x.name)).toEqual(['b2']);
    expect(rejected).toEqual([{ reason: 'too-large', name: 'b1', bytes: 5 * 1024 }]);
    expect(q.rejected).toBe(1);
    expect(q.received).toBe(1);
  });

  it("whenFull 'reject' refuses new notifies instead of discarding acknowledged ones", async () => {
    const q = new NotificationQueue({ capacity: 3, maxBytes: 3 * 1024, whenFull: 'reject' });
    expect([1, 2, 3].map((i) => q.push(big(i, 1)))).toEqual([true, true, true]);
    expect(q.push(big(4, 1))).toBe(false);
    expect(q.dropped).toBe(0);
    expect(q.rejected).toBe(1);
    // Consuming makes room again, and a waiting consumer takes a notify directly.
    expect((await q.next()).value?.name).toBe('b1');
    expect(q.push(big(5, 1))).toBe(true);
    expect(q.drain().map((x) => x.name)).toEqual(['b2', 'b3', 'b5']);
    const waiting = q.next();
    expect(q.push(big(10, 1))).toBe(true);
    expect((await waiting).value?.name).toBe('b10');
    expect(q.size).toBe(0);
  });

  it('refuses everything after close()', () => {
    const q = new NotificationQueue();
    q.close();
    expect(q.push(n(1))).toBe(false);
    expect(q.rejected).toBe(1);
  });

  it('memory stays bounded under a flood of 1 MiB notifies nobody drains', () => {
    const q = new NotificationQueue(); // defaults: 64 MiB, 1 MiB per notify
    const msg = 'y'.repeat(1024 * 1024 - 16);
    for (let i = 0; i < 300; i++) q.push({ name: `n${i}`, msg });
    expect(q.bytes).toBeLessThanOrEqual(64 * 1024 * 1024);
    expect(q.size).toBe(64);
    expect(q.dropped).toBe(300 - 64);
  });
});

describe('NotificationQueue: claimed names', () => {
  it('a claimed name goes to its handler, never to the buffer; announced when accepted, refused (sender told) when not', async () => {
    const q = new NotificationQueue({ capacity: 2 });
    const handled: Notify[] = [];
    const seen: Notify[] = [];
    const rejects: { reason: string; name: string }[] = [];
    q.on('notify', (x) => seen.push(x));
    q.on('reject', (r) => rejects.push(r));
    const unclaim = q.claim('kv', (x) => {
      handled.push(x);
      return x.msg !== 'bad';
    });
    expect(q.push({ name: 'kv', msg: 'good' })).toBe(true);
    expect(q.push({ name: 'kv', msg: 'bad' })).toBe(false);
    for (let i = 0; i < 100; i++) q.push({ name: 'kv', msg: `flood ${i}` });
    q.push(n(1));
    // The application's notify is neither crowded out nor mixed with the claimed ones.
    expect(q.drain()).toEqual([n(1)]);
    expect(handled).toHaveLength(102);
    expect(seen.filter((x) => x.name === 'kv')).toHaveLength(101);
    expect(rejects).toEqual([{ reason: 'refused', name: 'kv', bytes: 5 }]);
    expect(q.received).toBe(102);
    expect(q.rejected).toBe(1);
    expect(q.dropped).toBe(0);
    // A handler that throws refuses; one name, one handler; after unclaim the name is buffered again.
    expect(() => q.claim('kv', () => true)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    unclaim();
    const q2 = q.claim('kv', () => {
      throw new Error('boom');
    });
    expect(q.push({ name: 'kv', msg: 'x' })).toBe(false);
    q2();
    expect(q.push({ name: 'kv', msg: 'kept' })).toBe(true);
    expect(q.drain()).toEqual([{ name: 'kv', msg: 'kept' }]);
    // Size limits apply before the handler sees anything.
    const small = new NotificationQueue({ maxMessageBytes: 8 });
    let calls = 0;
    small.claim('kv', () => ++calls > 0);
    expect(small.push({ name: 'kv', msg: 'far too long' })).toBe(false);
    expect(calls).toBe(0);
  });
});
