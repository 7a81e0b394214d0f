// KV layout validation and address arithmetic, block coalescing, and transfer plans.
import { describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib';
import { KvLayout, blockPieces, blockRuns, failedPairs, pairedRuns, planTransfer, type KvLayoutSpec } from '../../lib/kv';

const base: KvLayoutSpec = { numLayers: 2, numBlocks: 10, blockSize: 4, headBytes: 8, numHeads: 2 };

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as MooncakeError).code;
  }
  return undefined;
}

describe('KvLayout', () => {
  it('computes sizes for MHA (K and V per layer)', () => {
    const l = KvLayout.from(base);
    expect(l.attention).toBe('mha');
    expect(l.headLayout).toBe('NHD');
    expect(l.tensorCount).toBe(4);
    expect(l.blockBytes).toBe(4 * 2 * 8);
    expect(l.tensorBytes).toBe(10 * 64);
    expect(l.totalBytes).toBe(4 * 640);
    expect(l.tensorIndex(1, 'k')).toBe(2);
    expect(l.tensorIndex(1, 'v')).toBe(3);
    expect(l.tensorAt(3)).toEqual({ layer: 1, kind: 'v' });
    expect(l.blockRange(3)).toEqual({ offset: 192, length: 64 });
    expect(l.blocksRange(3, 4)).toEqual({ offset: 192, length: 256 });
  });

  it('computes sizes for MLA (one latent per layer, one head)', () => {
    const l = KvLayout.from({ attention: 'mla', numLayers: 3, numBlocks: 5, blockSize: 16, headBytes: 1152 });
    expect(l.numHeads).toBe(1);
    expect(l.tensorCount).toBe(3);
    expect(l.tensorIndex(2, 'latent')).toBe(2);
    expect(code(() => l.tensorIndex(0, 'k'))).toBe('INVALID_ARGUMENT');
    expect(l.headRanges(0, 1)).toEqual([{ offset: 0, length: 16 * 1152 }]);
  });

  it("computes sizes for K|V in one tensor per layer (combinedKv: vLLM's LBHNC page)", () => {
    const l = KvLayout.from({ ...base, headBytes: 16, headLayout: 'HND', combinedKv: true });
    expect(l.tensorsPerLayer).toBe(1);
    expect(l.tensorCount).toBe(2);
    expect(l.blockBytes).toBe(4 * 2 * 16);
    expect(l.totalBytes).toBe(2 * 10 * 128);
    expect(l.tensorIndex(1, 'kv')).toBe(1);
    expect(l.tensorAt(1)).toEqual({ layer: 1, kind: 'kv' });
    expect(code(() => l.tensorIndex(0, 'k'))).toBe('INVALID_ARGUMENT');
    // Head 1 of a block is one piece after head 0's tokens (HND).
    expect(l.headRanges(1, 1)).toEqual([{ offset: 4 * 16, length: 4 * 16 }]);
    expect(KvLayout.fromJSON(l.toJSON())).toEqual(l);
    expect(l.toJSON().combined_kv).toBe(true);
    expect(l.incompatibility(KvLayout.from({ ...base, headBytes: 16, headLayout: 'HND' }))).toMatch(/combinedKv/);
    expect(code(() => KvLayout.from({ attention: 'mla', numLayers: 1, numBlocks: 1, blockSize: 1, headBytes: 1, combinedKv: true }))).toBe('INVALID_CONFIG');
    expect(code(() => KvLayout.from({ ...base, combinedKv: 'yes' as unknown as boolean }))).toBe('INVALID_CONFIG');
  });

  it('rejects every invalid field with INVALID_CONFIG naming it', () => {
    const cases: [Partial<KvLayoutSpec> & Record<string, unknown>, string][] = [
      [{ numLayers: 0 }, 'layout.numLayers'],
      [{ numLayers: 1.5 }, 'layout.numLayers'],
      [{ numBlocks: -1 }, 'layout.numBlocks'],
      [{ blockSize: '16' as never }, 'layout.blockSize'],
      [{ headBytes: 0 }, 'layout.headBytes'],
      [{ numHeads: undefined }, 'layout.numHeads'],
      [{ attention: 'gqa' as never }, 'layout.attention'],
      [{ headLayout: 'NDH' as never }, 'layout.headLayout'],
      [{ attention: 'mla', numHeads: 2 }, 'layout.numHeads'],
    ];
    for (const [patch, field] of cases) {
      let err: MooncakeError | undefined;
      try {
        KvLayout.from({ ...base, ...patch } as KvLayoutSpec);
      } catch (e) {
        err = e as MooncakeError;
      }
      expect(err?.code, field).toBe('INVALID_CONFIG');
      expect(err?.message).toContain(field);
      expect(err?.details?.field).toBe(field);
    }
    expect(code(() => KvLayout.from({ ...base, numBlocks: 2 ** 40, headBytes: 2 ** 20 }))).toBe('INVALID_CONFIG');
  });

  it('bounds-checks blocks, heads and layers', () => {
    const l = KvLayout.from(base);
    expect(code(() => l.blockRange(10))).toBe('INVALID_ARGUMENT');
    expect(code(() => l.blockRange(-1))).toBe('INVALID_ARGUMENT');
    expect(code(() => l.blocksRange(8, 3))).toBe('INVALID_ARGUMENT');
    expect(code(() => l.headRanges(1, 2))).toBe('INVALID_ARGUMENT');
    expect(code(() => l.tensorIndex(2, 'k'))).toBe('INVALID_ARGUMENT');
  });

  it('gives head-slice ranges: one piece for HND, one per token for NHD', () => {
    const nhd = KvLayout.from({ ...base, numHeads: 4 });
    expect(nhd.headRanges(0, 4)).toEqual([{ offset: 0, length: nhd.blockBytes }]);
    expect(nhd.headRanges(2, 2)).toEqual([0, 1, 2, 3].map((t) => ({ offset: (t * 4 + 2) * 8, length: 16 })));
    const hnd = KvLayout.from({ ...base, numHeads: 4, headLayout: 'HND' });
    expect(hnd.headRanges(2, 2)).toEqual([{ offset: 2 * 4 * 8, length: 2 * 4 * 8 }]);
    expect(hnd.tokenHeadOffset(3, 1)).toBe((1 * 4 + 3) * 8);
    expect(nhd.tokenHeadOffset(3, 1)).toBe((3 * 4 + 1) * 8);
  });
});

describe('coalescing', () => {
  it('splits block ids into consecutive runs', () => {
    expect(blockRuns([3, 4, 5, 9, 10, 2])).toEqual([
      { start: 3, count: 3 },
      { start: 9, count: 2 },
      { start: 2, count: 1 },
    ]);
    expect(blockRuns([])).toEqual([]);
    expect(blockRuns([7, 7])).toEqual([{ start: 7, count: 1 }, { start: 7, count: 1 }]);
  });

  it('pairs local and remote ids into runs consecutive on both sides', () => {
    expect(pairedRuns([1, 2, 3, 4], [10, 11, 20, 21])).toEqual([
      { index: 0, local: 1, remote: 10, count: 2 },
      { index: 2, local: 3, remote: 20, count: 2 },
    ]);
    expect(pairedRuns([5, 6, 9], [0, 1, 2])).toEqual([
      { index: 0, local: 5, remote: 0, count: 2 },
      { index: 2, local: 9, remote: 2, count: 1 },
    ]);
    expect(code(() => pairedRuns([1], [1, 2]))).toBe('INVALID_ARGUMENT');
  });
});

describe('transfer plans', () => {
  const L = KvLayout.from(base);
  const tensorsA = [0x10000n, 0x20000n, 0x30000n, 0x40000n];
  const tensorsB = [0x90000n, 0xa0000n, 0xb0000n, 0xc0000n];

  it('moves whole consecutive blocks as one range per tensor and run', () => {
    const plan = planTransfer({ layout: L, tensors: tensorsA, blockIds: [1, 2, 3, 7], head: 0 }, { layout: L, tensors: tensorsB, blockIds: [4, 5, 6, 0], head: 0 }, 2);
    expect(plan.wholeBlocks).toBe(true);
    expect(plan.requests).toHaveLength(2 * 4); // 2 runs × 4 tensors
    expect(plan.requests[0]).toEqual({ local: 0x10000n + 64n, remote: 0x90000n + 4n * 64n, length: 3 * 64 });
    expect(plan.requests[1]).toEqual({ local: 0x10000n + 7n * 64n, remote: 0x90000n, length: 64 });
    expect(plan.requests[7]).toEqual({ local: 0x40000n + 7n * 64n, remote: 0xc0000n, length: 64 });
    expect(plan.bytes).toBe(4 * 4 * 64);
  });

  it('gathers a head slice into part of a wider block (NHD: one range per token)', () => {
    const wide = KvLayout.from({ ...base, numHeads: 4 });
    // local (decode) holds 4 heads; the peer (prefill) holds 2, which are local heads 2..3.
    const plan = planTransfer({ layout: wide, tensors: tensorsA, blockIds: [0, 1], head: 2 }, { layout: L, tensors: tensorsB, blockIds: [5, 6], head: 0 }, 2);
    expect(plan.wholeBlocks).toBe(false);
    expect(plan.requests).toHaveLength(4 * 2 * 4); // tensors × blocks × tokens
    expect(plan.requests[1]).toEqual({ local: 0x10000n + BigInt((1 * 4 + 2) * 8), remote: 0x90000n + 5n * 64n + BigInt(1 * 2 * 8), length: 16 });
    expect(plan.bytes).toBe(4 * 2 * 64);
  });

  it('gathers a head slice as one range per block with HND', () => {
    const wide = KvLayout.from({ ...base, numHeads: 4, headLayout: 'HND' });
    const narrow = KvLayout.from({ ...base, headLayout: 'HND' });
    const plan = planTransfer({ layout: wide, tensors: tensorsA, blockIds: [0, 1], head: 2 }, { layout: narrow, tensors: tensorsB, blockIds: [5, 6], head: 0 }, 2);
    expect(plan.requests).toHaveLength(4 * 2);
    expect(plan.requests[0]).toEqual({ local: 0x10000n + BigInt(2 * 4 * 8), remote: 0x90000n + 5n * 64n, length: 64 });
    expect(plan.requests[1].local).toBe(0x10000n + 128n + BigInt(2 * 4 * 8));
  });

  it('merges elementary pieces across any NHD/HND mix', () => {
    const nhd1 = KvLayout.from({ ...base, numHeads: 1 });
    const hnd4 = KvLayout.from({ ...base, numHeads: 4, headLayout: 'HND' });
    // One head on a 1-head NHD rank is a whole block; in HND it is one contiguous piece.
    expect(blockPieces(hnd4, 3, nhd1, 0, 1)).toEqual([{ local: 3 * 4 * 8, remote: 0, length: 32 }]);
    const nhd4 = KvLayout.from({ ...base, numHeads: 4 });
    // NHD 2 heads → HND: no two tokens are contiguous on both sides.
    expect(blockPieces(nhd4, 0, hnd4, 0, 2)).toHaveLength(8);
  });

  it('refuses incompatible layouts and out-of-range ids', () => {
    const other = KvLayout.from({ ...base, blockSize: 8 });
    expect(code(() => planTransfer({ layout: L, tensors: tensorsA, blockIds: [0], head: 0 }, { layout: other, tensors: tensorsB, blockIds: [0], head: 0 }, 2))).toBe('INVALID_CONFIG');
    expect(code(() => planTransfer({ layout: L, tensors: tensorsA, blockIds: [10], head: 0 }, { layout: L, tensors: tensorsB, blockIds: [0], head: 0 }, 2))).toBe('INVALID_ARGUMENT');
    expect(code(() => planTransfer({ layout: L, tensors: tensorsA, blockIds: [0], head: 1 }, { layout: L, tensors: tensorsB, blockIds: [0], head: 0 }, 2))).toBe('INVALID_ARGUMENT');
  });

  it('maps per-request failures back to exactly the block pairs they carried', () => {
    const plan = planTransfer({ layout: L, tensors: tensorsA, blockIds: [1, 2, 3, 7, 8], head: 0 }, { layout: L, tensors: tensorsB, blockIds: [4, 5, 6, 0, 9], head: 0 }, 2);
    // runs: [1,2,3]↔[4,5,6] (pairs 0..2), [7]↔[0] (pair 3), [8]↔[9] (pair 4); 3 requests per tensor.
    expect(plan.requests).toHaveLength(12);
    const failures: (string | undefined)[] = new Array(12).fill(undefined);
    failures[4] = 'CONNECTION_LOST'; // tensor 1, run 1 → pair 3
    expect(failedPairs(plan, failures)).toEqual([3]);
    failures[9] = 'TIMEOUT'; // tensor 3, run 0 → pairs 0..2
    expect(failedPairs(plan, failures)).toEqual([0, 1, 2, 3]);
    expect(failedPairs(plan, undefined)).toEqual([0, 1, 2, 3, 4]);
    expect(failedPairs(plan, new Array(12).fill(undefined))).toEqual([]);
  });

  it('blockPieces: every head slice between any two layouts covers exactly the right bytes, merged as far as both sides allow', () => {
    // Reference: every (token, head) row, merged where contiguous on both sides.
    const reference = (l: KvLayout, lh: number, r: KvLayout, rh: number, count: number) => {
      const out: { local: number; remote: number; length: number }[] = [];
      const rows: { local: number; remote: number; length: number }[] = [];
      const hnd = l.headLayout === 'HND';
      for (let o = 0; o < (hnd ? count : l.blockSize); o++) {
        for (let i = 0; i < (hnd ? l.blockSize : count); i++) {
          const [h, t] = hnd ? [o, i] : [i, o];
          rows.push({ local: l.tokenHeadOffset(t, lh + h), remote: r.tokenHeadOffset(t, rh + h), length: l.headBytes });
        }
      }
      for (const e of rows) {
        const last = out[out.length - 1];
        if (last && last.local + last.length === e.local && last.remote + last.length === e.remote) last.length += e.length;
        else out.push({ ...e });
      }
      return out;
    };
    let checked = 0;
    for (const ll of ['NHD', 'HND'] as const) {
      for (const rl of ['NHD', 'HND'] as const) {
        for (const [lHeads, rHeads] of [[4, 4], [4, 2], [2, 4], [8, 1], [1, 1]]) {
          const l = KvLayout.from({ numLayers: 1, numBlocks: 2, blockSize: 3, headBytes: 4, numHeads: lHeads, headLayout: ll });
          const r = KvLayout.from({ numLayers: 1, numBlocks: 2, blockSize: 3, headBytes: 4, numHeads: rHeads, headLayout: rl });
          for (let count = 1; count <= Math.min(lHeads, rHeads); count++) {
            for (let lh = 0; lh + count <= lHeads; lh++) {
              for (let rh = 0; rh + count <= rHeads; rh++) {
                expect(blockPieces(l, lh, r, rh, count), `${ll}${lHeads}[${lh}] <- ${rl}${rHeads}[${rh}] x${count}`).toEqual(reference(l, lh, r, rh, count));
                checked++;
              }
            }
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
  });
});
