/**
 * The metric model every component reports in: families of counters, gauges and histograms, collected
 * when scraped (components keep plain counters; nothing is computed per event beyond an increment).
 */

export type MetricType = 'counter' | 'gauge' | 'histogram';

/** Label names to values. Every label set of a family is bounded (see docs/metrics.md). */
export type Labels = Readonly<Record<string, string>>;

export interface ValueSample {
  readonly labels?: Labels;
  readonly value: number;
}

export interface HistogramSample {
  readonly labels?: Labels;
  /** Upper bounds of the buckets, in increasing order (seconds for durations). */
  readonly bounds: readonly number[];
  /** Observations per bucket, not cumulative: `bounds.length + 1` entries, the last above every bound. */
  readonly counts: readonly number[];
  readonly sum: number;
}

interface FamilyBase {
  /** Prometheus name; counters end in `_total`. */
  readonly name: string;
  readonly help: string;
}

export type MetricFamily =
  | (FamilyBase & { readonly type: 'counter' | 'gauge'; readonly samples: readonly ValueSample[] })
  | (FamilyBase & { readonly type: 'histogram'; readonly samples: readonly HistogramSample[] });

/** Anything that reports metrics: engines, KV producers and consumers, metadata servers, proxies. */
export interface MetricsSource {
  /** The source's metrics now. Cheap: reads counters the source keeps anyway. */
  collectMetrics(): MetricFamily[];
}

/** Builds families tersely: `counter(name, help, [[labels, value], ...])`. */
export function counter(name: string, help: string, samples: readonly (readonly [Labels, number])[]): MetricFamily {
  return { name, help, type: 'counter', samples: samples.map(([labels, value]) => ({ labels, value })) };
}

export function gauge(name: string, help: string, samples: readonly (readonly [Labels, number])[]): MetricFamily {
  return { name, help, type: 'gauge', samples: samples.map(([labels, value]) => ({ labels, value })) };
}

export function histogram(name: string, help: string, samples: readonly HistogramSample[]): MetricFamily {
  return { name, help, type: 'histogram', samples };
}

/** The same family with `extra` labels added to every sample (a source registered with labels). */
export function withLabels(f: MetricFamily, extra: Labels | undefined): MetricFamily {
  if (extra === undefined || Object.keys(extra).length === 0) return f;
  if (f.type === 'histogram') return { ...f, samples: f.samples.map((s) => ({ ...s, labels: { ...s.labels, ...extra } })) };
  return { ...f, samples: f.samples.map((s) => ({ ...s, labels: { ...s.labels, ...extra } })) };
}
