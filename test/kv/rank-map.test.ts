// Rank mapping: which prefill ranks and head slices a decode rank gathers.
import { describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib';
import { heldHeads, requestHash, sourcesForDecodeRank, targetsForPrefillRank, validateTpMapping, type TpMapping } from '../../lib/kv';

const ids = Array.from({ length: 200 }, (_, i) => `cmpl-${i}-0`);

function invalid(m: TpMapping): string | undefined {
  try {
    validateTpMapping(m);
  } catch (e) {
    return (e as MooncakeError).code;
  }
  return undefined;
}

/** Every decode head is covered exactly once, by a prefill rank that holds it, and both directions agree. */
function checkConsistent(m: TpMapping, requestId: string): void {
  const forward: string[] = [];
  for (let d = 0; d < m.decodeTp; d++) {
    const mine = heldHeads(m.attention, m.totalHeads, m.decodeTp, d);
    let covered = 0;
    for (const s of sourcesForDecodeRank(requestId, m, d)) {
      const theirs = heldHeads(m.attention, m.totalHeads, m.prefillTp, s.prefillRank);
      expect(s.decodeHead).toBe(covered);
      expect(mine.start + s.decodeHead).toBe(theirs.start + s.prefillHead);
      expect(s.prefillHead + s.count).toBeLessThanOrEqual(theirs.count);
      covered += s.count;
      forward.push(JSON.stringify(s));
    }
    expect(covered).toBe(mine.count);
  }
  const backward: string[] = [];
  for (let p = 0; p < m.prefillTp; p++) for (const s of targetsForPrefillRank(requestId, m, p)) backward.push(JSON.stringify(s));
  expect(backward.sort()).toEqual(forward.sort());
}

describe('rank mapping', () => {
  it('pairs rank r with rank r when TP sizes are equal', () => {
    const m: TpMapping = { attention: 'mha', totalHeads: 8, prefillTp: 2, decodeTp: 2 };
    for (const id of ids.slice(0, 10)) {
      expect(sourcesForDecodeRank(id, m, 0)).toEqual([{ prefillRank: 0, decodeRank: 0, decodeHead: 0, prefillHead: 0, count: 4 }]);
      expect(sourcesForDecodeRank(id, m, 1)).toEqual([{ prefillRank: 1, decodeRank: 1, decodeHead: 0, prefillHead: 0, count: 4 }]);
      checkConsistent(m, id);
    }
  });

  it('gathers head slices from several prefill ranks (GQA, prefill tp 4 → decode tp 2)', () => {
    const m: TpMapping = { attention: 'mha', totalHeads: 8, prefillTp: 4, decodeTp: 2 };
    expect(sourcesForDecodeRank('x', m, 0)).toEqual([
      { prefillRank: 0, decodeRank: 0, decodeHead: 0, prefillHead: 0, count: 2 },
      { prefillRank: 1, decodeRank: 0, decodeHead: 2, prefillHead: 0, count: 2 },
    ]);
    expect(sourcesForDecodeRank('x', m, 1).map((s) => s.prefillRank)).toEqual([2, 3]);
    expect(targetsForPrefillRank('x', m, 3)).toEqual([{ prefillRank: 3, decodeRank: 1, decodeHead: 2, prefillHead: 0, count: 2 }]);
    for (const id of ids.slice(0, 20)) checkConsistent(m, id);
  });

  it('picks one replica deterministically when prefill TP exceeds the heads', () => {
    const m: TpMapping = { attention: 'mha', totalHeads: 2, prefillTp: 4, decodeTp: 2 };
    const seen = new Set<number>();
    for (const id of ids) {
      const [s0] = sourcesForDecodeRank(id, m, 0);
      const [s1] = sourcesForDecodeRank(id, m, 1);
      expect([0, 1]).toContain(s0.prefillRank); // head 0 lives on prefill ranks 0 and 1
      expect([2, 3]).toContain(s1.prefillRank);
      expect(sourcesForDecodeRank(id, m, 0)).toEqual([s0]); // same answer every time
      seen.add(s0.prefillRank);
      checkConsistent(m, id);
    }
    expect(seen.size).toBe(2); // spread over both replicas
    for (const id of ids.slice(0, 20)) checkConsistent({ attention: 'mha', totalHeads: 2, prefillTp: 8, decodeTp: 4 }, id);
  });

  it('MLA: any one prefill rank serves a decode rank; decode ranks of a request use distinct ones', () => {
    const m: TpMapping = { attention: 'mla', totalHeads: 1, prefillTp: 4, decodeTp: 2 };
    const counts = [0, 0, 0, 0];
    for (const id of ids) {
      const a = sourcesForDecodeRank(id, m, 0);
      const b = sourcesForDecodeRank(id, m, 1);
      expect(a).toHaveLength(1);
      expect(a[0]).toMatchObject({ decodeHead: 0, prefillHead: 0, count: 1 });
      expect(a[0].prefillRank).not.toBe(b[0].prefillRank);
      expect(a[0].prefillRank).toBe(requestHash(id) % 4);
      counts[a[0].prefillRank]++;
      // The unchosen prefill ranks know they are not needed.
      const chosen = new Set([a[0].prefillRank, b[0].prefillRank]);
      for (let p = 0; p < 4; p++) expect(targetsForPrefillRank(id, m, p).length > 0).toBe(chosen.has(p));
      checkConsistent(m, id);
    }
    for (const c of counts) expect(c).toBeGreaterThan(20);
  });

  it('hashes request ids stably', () => {
    expect(requestHash('req-1')).toBe(requestHash('req-1'));
    expect(requestHash('req-1')).not.toBe(requestHash('req-2'));
    // First 4 bytes of SHA-256("abc") = ba7816bf.
    expect(requestHash('abc')).toBe(0xba7816bf);
  });

  it('rejects prefill TP that is not a multiple of decode TP, and uneven head sharding', () => {
    expect(invalid({ attention: 'mha', totalHeads: 8, prefillTp: 2, decodeTp: 4 })).toBe('INVALID_CONFIG');
    expect(invalid({ attention: 'mha', totalHeads: 12, prefillTp: 6, decodeTp: 4 })).toBe('INVALID_CONFIG');
    expect(invalid({ attention: 'mha', totalHeads: 6, prefillTp: 4, decodeTp: 2 })).toBe('INVALID_CONFIG');
    expect(invalid({ attention: 'mha', totalHeads: 0, prefillTp: 2, decodeTp: 2 })).toBe('INVALID_CONFIG');
    expect(invalid({ attention: 'mha', totalHeads: 8, prefillTp: 0, decodeTp: 2 })).toBe('INVALID_CONFIG');
    expect(invalid({ attention: 'mla', totalHeads: 1, prefillTp: 6, decodeTp: 3 })).toBeUndefined();
    expect(invalid({ attention: 'mha', totalHeads: 2, prefillTp: 8, decodeTp: 4 })).toBeUndefined();
  });

  it('holds heads as vLLM shards them', () => {
    expect(heldHeads('mha', 8, 4, 3)).toEqual({ start: 6, count: 2 });
    expect(heldHeads('mha', 2, 8, 5)).toEqual({ start: 1, count: 1 });
    expect(heldHeads('mla', 1, 4, 3)).toEqual({ start: 0, count: 1 });
  });
});
