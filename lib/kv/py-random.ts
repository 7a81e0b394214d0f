/**
 * CPython's `random.Random(seed).sample(range(n), k)`, bit for bit, for integer seeds below 2**64.
 *
 * vllm-ascend picks the prefill ranks a decode rank reads from with exactly that call, seeded with the first
 * 8 bytes of the SHA-256 of the request id (little-endian). The prefill computes the same choice on its own
 * and frees the blocks of the ranks it believes were not picked, so a decode that picks differently reads
 * freed memory: agreement must be exact, not statistical.
 *
 * The pieces, as CPython implements them (Modules/_randommodule.c, Lib/random.py):
 * - MT19937 seeded with `init_by_array` over the 32-bit words of |seed| (least significant first; one word
 *   for seeds below 2**32, and the word 0 for the seed 0);
 * - `getrandbits(k)` for k <= 32: the next 32-bit output shifted right by 32 - k;
 * - `_randbelow(n)`: getrandbits(n.bit_length()) until the value is below n;
 * - `sample`: a partial Fisher-Yates shuffle of a pool when n is small against k, else rejection of repeats.
 */
import { createHash } from 'node:crypto';

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER = 0x80000000;
const LOWER = 0x7fffffff;

export class PyRandom {
  private readonly mt = new Uint32Array(N);
  private mti = N + 1;

  /** `random.Random(seed)` for a non-negative integer seed. */
  constructor(seed: bigint) {
    let n = seed < 0n ? -seed : seed;
    const key: number[] = [];
    do {
      key.push(Number(n & 0xffffffffn));
      n >>= 32n;
    } while (n > 0n);
    this.initByArray(key);
  }

  private initGenrand(s: number): void {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.mti = N;
  }

  private initByArray(key: readonly number[]): void {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(N, key.length); k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
      i++;
      j++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = N - 1; k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
    }
    mt[0] = 0x80000000;
  }

  /** The next 32-bit output of MT19937 (genrand_uint32). */
  uint32(): number {
    const mt = this.mt;
    if (this.mti >= N) {
      let kk = 0;
      for (; kk < N - M; kk++) {
        const y = (mt[kk] & UPPER) | (mt[kk + 1] & LOWER);
        mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      for (; kk < N - 1; kk++) {
        const y = (mt[kk] & UPPER) | (mt[kk + 1] & LOWER);
        mt[kk] = mt[kk + (M - N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      const y = (mt[N - 1] & UPPER) | (mt[0] & LOWER);
      mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      this.mti = 0;
    }
    let y = mt[this.mti++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `getrandbits(k)` for 0 <= k <= 32. */
  getrandbits(k: number): number {
    if (k === 0) return 0;
    return this.uint32() >>> (32 - k);
  }

  /** `_randbelow(n)` for 0 < n < 2**32. */
  randbelow(n: number): number {
    const k = 32 - Math.clz32(n);
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /** `sample(range(n), k)`: k distinct values of [0, n), in CPython's order. */
  sample(n: number, k: number): number[] {
    if (!Number.isSafeInteger(n) || !Number.isSafeInteger(k) || k < 0 || k > n || n >= 2 ** 32) {
      throw new RangeError(`sample larger than population or is negative (n ${n}, k ${k})`);
    }
    const result: number[] = new Array(k);
    let setsize = 21;
    if (k > 5) setsize += 4 ** Math.ceil(Math.log(k * 3) / Math.log(4));
    if (n <= setsize) {
      const pool = [...Array(n).keys()];
      for (let i = 0; i < k; i++) {
        const j = this.randbelow(n - i);
        result[i] = pool[j];
        pool[j] = pool[n - i - 1];
      }
    } else {
      const selected = new Set<number>();
      for (let i = 0; i < k; i++) {
        let j = this.randbelow(n);
        while (selected.has(j)) j = this.randbelow(n);
        selected.add(j);
        result[i] = j;
      }
    }
    return result;
  }
}

/** vllm-ascend's `string_to_int64_hash`: the first 8 bytes of SHA-256(utf-8), little-endian, unsigned. */
export function stringToInt64Hash(s: string): bigint {
  return createHash('sha256').update(s, 'utf8').digest().readBigUInt64LE(0);
}
