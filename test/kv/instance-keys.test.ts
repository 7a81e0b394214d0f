// Unit tests of how a rank knows the token keys of the other ranks of its instance (no holdKey): which
// tokens it accepts, when it may refuse one, how often it reads the store, and the unverified messages
// that wait in the early buffer meanwhile.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InstanceKeys, type PublishedKey } from '../../lib/kv/instance-keys';
import { EarlyMessages } from '../../lib/kv/early';
import { RequestTokens } from '../../lib/kv/tokens';

/** A store the keys are read from: `entries[tp]`, or a read that fails; counts reads. */
function fakeReader(entries: Map<number, PublishedKey | 'fail'>, local: number[] = []) {
  const reads: number[] = [];
  return {
    reads,
    reader: {
      local: (tp: number) => local.includes(tp),
      read: async (tp: number) => {
        reads.push(tp);
        await Promise.resolve();
        const e = entries.get(tp);
        if (e === 'fail') throw new Error('store down');
        return e;
      },
    },
  };
}

const key = (n: number) => Buffer.alloc(32, n);

describe('InstanceKeys', () => {
  afterEach(() => vi.useRealTimers());

  it("accepts tokens made under a key read from another rank's entry; unknown until then, bad once every key is known", async () => {
    vi.useFakeTimers();
    const entries = new Map<number, PublishedKey | 'fail'>();
    const { reader, reads } = fakeReader(entries, [2]);
    const keys = new InstanceKeys(0, 3, reader, { refreshMs: 10_000 });
    const mine = new RequestTokens(key(1), 'p', 0);
    mine.accept(keys);
    const theirs = new RequestTokens(key(9), 'p', 0).token('r');
    expect(keys.complete()).toBe(false); // rank 1 not read yet (rank 2 lives in this process)
    expect(mine.check('r', theirs)).toBe('unknown');
    expect(mine.check('r', 'not a token')).toBe('bad'); // malformed: never waits
    expect(mine.check('r', mine.token('r'))).toBe('ok');
    entries.set(1, { instance: 'a', key: key(9) });
    keys.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(reads).toEqual([1]); // the local rank is never read
    expect(keys.complete()).toBe(true);
    expect(mine.check('r', theirs)).toBe('ok');
    expect(mine.check('r', new RequestTokens(key(8), 'p', 0).token('r'))).toBe('bad');
    expect(mine.check('r', new RequestTokens(key(9), 'p', 1).token('r'))).toBe('bad'); // another dp group
    keys.close();
  });

  it('a rank that restarted: its new key is read and the previous one still counts; an entry that went away keeps its keys', async () => {
    vi.useFakeTimers();
    const entries = new Map<number, PublishedKey | 'fail'>([[1, { instance: 'a', key: key(5) }]]);
    const { reader } = fakeReader(entries);
    const keys = new InstanceKeys(0, 2, reader, { refreshMs: 1000 });
    keys.start();
    await vi.advanceTimersByTimeAsync(0);
    entries.set(1, { instance: 'b', key: key(6) });
    await vi.advanceTimersByTimeAsync(1000);
    expect(keys.keys()).toEqual([key(6), key(5)]);
    entries.delete(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(keys.keys()).toEqual([key(6), key(5)]);
    entries.set(1, { instance: 'c', key: key(7) });
    await vi.advanceTimersByTimeAsync(1000);
    expect(keys.keys()).toEqual([key(7), key(6)]); // at most two per rank
    // A rank with a configured holdKey publishes none: known, but nothing to accept.
    entries.set(1, { instance: 'd' });
    await vi.advanceTimersByTimeAsync(1000);
    expect(keys.complete()).toBe(true);
    expect(keys.keys()).toEqual([key(7)]);
    keys.close();
  });

  it('reads on demand at most one round at a time, minGapMs apart (retryMs after a failed read), whatever peers send', async () => {
    vi.useFakeTimers();
    const entries = new Map<number, PublishedKey | 'fail'>([[1, 'fail']]);
    const { reader, reads } = fakeReader(entries);
    const rounds: { startedAt: number; ok: boolean }[] = [];
    const keys = new InstanceKeys(0, 2, reader, { refreshMs: 60_000, minGapMs: 100, retryMs: 1000 });
    keys.onRound = (startedAt, ok) => rounds.push({ startedAt, ok });
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) keys.learn();
    await vi.advanceTimersByTimeAsync(0);
    expect(reads).toHaveLength(1);
    expect(rounds).toEqual([{ startedAt: t0, ok: false }]);
    for (let i = 0; i < 1000; i++) keys.learn();
    await vi.advanceTimersByTimeAsync(999);
    expect(reads).toHaveLength(1); // a failed read: the next round waits retryMs
    await vi.advanceTimersByTimeAsync(1);
    expect(reads).toHaveLength(2);
    entries.set(1, { instance: 'a', key: key(3) });
    keys.learn();
    await vi.advanceTimersByTimeAsync(1000);
    expect(reads).toHaveLength(3);
    keys.learn();
    await vi.advanceTimersByTimeAsync(99);
    expect(reads).toHaveLength(3); // after a good round: minGapMs
    await vi.advanceTimersByTimeAsync(1);
    expect(reads).toHaveLength(4);
    expect(rounds.map((r) => r.ok)).toEqual([false, false, true, true]);
    keys.close();
    keys.learn();
    await vi.advanceTimersByTimeAsync(5000);
    expect(reads).toHaveLength(4);
  });
});

describe('EarlyMessages: unverified messages', () => {
  afterEach(() => vi.useRealTimers());

  it('share the bounds and the expiry of early messages, and leave when decided', () => {
    vi.useFakeTimers();
    const e = new EarlyMessages<string>({ maxCount: 3, maxBytes: 10, ttlMs: 100 }, (m) => m.length);
    expect(e.keep('a', 'xxxx')).toBe(true);
    expect(e.keepUnverified('uuuu')).toBe(true);
    expect(e.keepUnverified('vvv')).toBe(false); // 11 bytes
    vi.advanceTimersByTime(50);
    expect(e.keepUnverified('w')).toBe(true);
    expect(e.keepUnverified('')).toBe(false); // 4 messages
    expect(e.stats()).toEqual({ held: 3, bytes: 9, expired: 0 });
    expect(e.unverifiedCount).toBe(2);
    expect(e.take('a')).toEqual(['xxxx']); // a hold takes only verified messages
    // Decided: those for which the callback says so, given when each arrived.
    const arrivals: number[] = [];
    expect(e.takeUnverified((m, arrived) => (arrivals.push(arrived), m === 'w'))).toEqual(['w']);
    expect(arrivals[1]! - arrivals[0]!).toBe(50);
    vi.advanceTimersByTime(60); // 'uuuu' (t=0) expired
    expect(e.takeUnverified(() => true)).toEqual([]);
    expect(e.stats()).toEqual({ held: 0, bytes: 0, expired: 1 });
  });
});
