/** Latency summaries shared by the bench and the KV metrics. */

/**
 * Mean, median, p99 and max of samples sorted ascending; a percentile q is the sample at index
 * min(n - 1, ⌊q·n⌋). All 0 when there are none.
 */
export function summarizeSorted(s: ArrayLike<number>): { mean: number; p50: number; p99: number; max: number } {
  if (s.length === 0) return { mean: 0, p50: 0, p99: 0, max: 0 };
  let sum = 0;
  for (let i = 0; i < s.length; i++) sum += s[i];
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { mean: sum / s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1] };
}
