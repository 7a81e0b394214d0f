/** Summaries of samples, one definition each: the bench, the proxy bench and the KV metrics use these. */

/**
 * The q-quantile (0 < q <= 1) of samples sorted ascending, by nearest rank: the sample at index
 * ⌈q·n⌉ − 1. NaN when there are none.
 */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  return sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))];
}

/** The median: the middle sample, or the mean of the two middle ones. NaN when there are none. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 === 1 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Mean, p50, p99 (quantile) and max of samples sorted ascending; all 0 when there are none. */
export function summarizeSorted(s: ArrayLike<number>): { mean: number; p50: number; p99: number; max: number } {
  if (s.length === 0) return { mean: 0, p50: 0, p99: 0, max: 0 };
  let sum = 0;
  for (let i = 0; i < s.length; i++) sum += s[i];
  return { mean: sum / s.length, p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1] };
}
