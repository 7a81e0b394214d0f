// Unit tests of the KV layer's bounded pieces: the early-message buffer, the hold fence's counters and the
// stale-pair rule, request tokens and KV message limits.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { decodeKvMessage, encodeKvMessage, kvMessageLimit } from '../../lib/kv/messages';
import { distinctSorted, stalePairs } from '../../lib/kv/fence';
import { EarlyMessages } from '../../lib/kv/rank-base';
import { RequestTokens, resolveHoldKey } from '../../lib/kv/tokens';

describe('EarlyMessages', () => {
  afterEach(() => vi.useRealTimers());

  it('refuses past maxCount or maxBytes, keeps what it has, and expires by arrival order', () => {
    vi.useFakeTimers();
    const e = new EarlyMessages<string>({ maxCount: 3, maxBytes: 10, ttlMs: 100 }, (m) => m.length);
    expect(e.keep('a', 'xxxx')).toBe(true);
    expect(e.keep('a', 'xxxx')).toBe(true);
    expect(e.keep('b', 'xxx')).toBe(false); // 11 bytes
    expect(e.keep('b', 'x')).toBe(true);
    expect(e.keep('c', '')).toBe(false); // 4 messages
    expect(e.stats()).toEqual({ held: 3, bytes: 9, expired: 0 });
    vi.advanceTimersByTime(60);
    expect(e.keep('c', 'x')).toBe(false); // still full
    expect(e.take('a')).toEqual(['xxxx', 'xxxx']);
    expect(e.keep('c', 'x')).toBe(true);
    vi.advanceTimersByTime(50); // 'b' (t=0) expired, 'c' (t=60) not
    expect(e.take('b')).toEqual([]);
    expect(e.stats()).toEqual({ held: 1, bytes: 1, expired: 1 });
    vi.advanceTimersByTime(60);
    expect(e.take('c')).toEqual([]);
    expect(e.stats()).toEqual({ held: 0, bytes: 0, expired: 2 });
  });
});

describe('hold fence rule', () => {
  it('a pair is intact only if its block was held (odd) before and unchanged after', () => {
    const remote = [7, 3, 7, 9];
    const blocks = distinctSorted(remote);
    expect(blocks).toEqual([3, 7, 9]);
    const before = Uint32Array.from([1, 5, 2]); // 9 not held
    expect(stalePairs(remote, blocks, before, Uint32Array.from([1, 5, 2]))).toEqual([3]);
    expect(stalePairs(remote, blocks, before, Uint32Array.from([1, 6, 2]))).toEqual([0, 2, 3]); // 7 released
    expect(stalePairs(remote, blocks, before, Uint32Array.from([3, 5, 2]))).toEqual([1, 3]); // 3 released and held again
  });
});

describe('request tokens', () => {
  it('are derived from key, engine, dp rank and request id, and checked in constant length', () => {
    const key = Buffer.alloc(32, 7);
    const t = new RequestTokens(key, 'p', 0);
    const same = new RequestTokens(Buffer.alloc(32, 7), 'p', 0);
    expect(t.token('r1')).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(same.token('r1')).toBe(t.token('r1'));
    expect(new RequestTokens(key, 'p', 1).token('r1')).not.toBe(t.token('r1'));
    expect(new RequestTokens(Buffer.alloc(32, 8), 'p', 0).token('r1')).not.toBe(t.token('r1'));
    expect(t.verify('r1', t.token('r1'))).toBe(true);
    expect(t.verify('r2', t.token('r1'))).toBe(false);
    expect(t.verify('r1', undefined)).toBe(false);
    expect(t.verify('r1', `${t.token('r1')}x`)).toBe(false);
  });

  it('holdKey: the option, else MC_KV_HOLD_KEY, else one random key per process; short keys are INVALID_CONFIG', () => {
    expect(resolveHoldKey('0123456789abcdef')).toEqual(Buffer.from('0123456789abcdef'));
    expect(resolveHoldKey(undefined)).toBe(resolveHoldKey(undefined));
    expect(() => resolveHoldKey('short')).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', details: { field: 'holdKey' } }));
    vi.stubEnv('MC_KV_HOLD_KEY', 'an instance-wide secret');
    try {
      expect(resolveHoldKey(undefined)).toEqual(Buffer.from('an instance-wide secret'));
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('KV message limits', () => {
  const from = { engine_id: 'd', dp_rank: 0, tp_rank: 0, tp_size: 1, host: 'h', rpc_port: 1 };

  it('the largest legitimate message of a layout fits its limit; one block more does not parse', () => {
    for (const numBlocks of [1, 64, 4096, 100_000]) {
      const all = Array.from({ length: numBlocks }, (_, i) => i);
      const n = encodeKvMessage({ type: 'done', request_id: 'r'.repeat(1024), from: { ...from, engine_id: 'e'.repeat(128), host: 'h'.repeat(255) }, ok: false, failed_block_ids: all, token: 't'.repeat(22) });
      expect(n.msg.length).toBeLessThanOrEqual(kvMessageLimit(numBlocks));
      expect(decodeKvMessage(n, numBlocks).message?.type).toBe('done');
      expect(decodeKvMessage(encodeKvMessage({ type: 'done', request_id: 'r', from, ok: false, failed_block_ids: [numBlocks] }), numBlocks).failure).toBe('malformed');
    }
    const huge = encodeKvMessage({ type: 'done', request_id: 'r', from, ok: false, failed_block_ids: Array.from({ length: 100_000 }, (_, i) => i) });
    expect(decodeKvMessage(huge, 64).failure).toBe('too-large');
  });
});
