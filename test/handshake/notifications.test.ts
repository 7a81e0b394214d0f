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
  });
});
