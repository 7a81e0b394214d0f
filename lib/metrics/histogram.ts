/**
 * A fixed-bucket histogram kept in JS (proxy request times, KV transfer times). Public fields are
 * read-only; only `observe` changes it.
 */
import type { HistogramSample, Labels } from './types';

/** Latency bucket upper bounds, in seconds: 1 ms to 5 min. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class Histogram {
  private readonly perBucket: number[];
  private total = 0;
  private n = 0;

  constructor(readonly bounds: readonly number[] = LATENCY_BUCKETS_SECONDS) {
    this.perBucket = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(seconds: number): void {
    this.total += seconds;
    this.n++;
    let i = 0;
    while (i < this.bounds.length && seconds > this.bounds[i]) i++;
    this.perBucket[i]++;
  }

  /** Observations per bucket (not cumulative); the last entry counts those above every bound. */
  get counts(): readonly number[] {
    return this.perBucket;
  }

  get sum(): number {
    return this.total;
  }

  get count(): number {
    return this.n;
  }

  sample(labels?: Labels): HistogramSample {
    return { labels, bounds: this.bounds, counts: [...this.perBucket], sum: this.total };
  }
}
