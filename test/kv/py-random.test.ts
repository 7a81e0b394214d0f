/**
 * PyRandom against the CPython interpreter itself: the same seeds, the same sample() calls, the same
 * answers. (The rank choice built on it is checked against vllm-ascend's own code in
 * test/connectors/rank-selection.test.ts.)
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { PyRandom, stringToInt64Hash } from '../../lib/kv/py-random';

function python(): string | undefined {
  for (const p of ['python3', 'python']) {
    try {
      execFileSync(p, ['-c', 'import random, hashlib, struct'], { stdio: 'ignore' });
      return p;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

const py = python();
if (!py) console.warn('SKIPPED test/kv/py-random.test.ts: no python3 on PATH to compare against');

const CASES: [number, number][] = [[1, 1], [2, 1], [4, 2], [8, 4], [16, 3], [64, 10], [100, 7], [3, 3], [30, 6], [200, 40]];
const SEEDS = [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 63n + 5n, 2n ** 64n - 1n];

describe.skipIf(!py)('PyRandom matches CPython random.Random(seed).sample', () => {
  it('for 500 request-id seeds and fixed edge seeds', () => {
    const ids = [...Array(500).keys()].map((i) => `cmpl-${i}-${(i * 2654435761) % 1000003}`);
    const script = `
import hashlib, json, random, struct, sys
ids, cases, seeds = json.load(sys.stdin)
out = []
for s in ids:
    seed = struct.unpack("<Q", hashlib.sha256(s.encode("utf-8")).digest()[:8])[0]
    out.append([str(seed)] + [random.Random(seed).sample(range(n), k) for n, k in cases])
for s in seeds:
    out.append([s] + [random.Random(int(s)).sample(range(n), k) for n, k in cases])
print(json.dumps(out))
`;
    const input = JSON.stringify([ids, CASES, SEEDS.map(String)]);
    const expected = JSON.parse(execFileSync(py as string, ['-c', script], { input, encoding: 'utf8' })) as [string, ...number[][]][];
    const seeds = [...ids.map(stringToInt64Hash), ...SEEDS];
    expect(expected).toHaveLength(seeds.length);
    let compared = 0;
    seeds.forEach((seed, i) => {
      expect(String(seed)).toBe(expected[i][0]);
      CASES.forEach(([n, k], c) => {
        expect(new PyRandom(seed).sample(n, k), `seed ${seed} sample(range(${n}), ${k})`).toEqual(expected[i][c + 1]);
        compared++;
      });
    });
    expect(compared).toBe(seeds.length * CASES.length);
  });

  it('rejects a sample larger than the population', () => {
    expect(() => new PyRandom(1n).sample(2, 3)).toThrow(RangeError);
  });
});
