/**
 * MetricsRegistry: gathers the metrics of engines, KV ranks, metadata servers and proxies, writes them
 * in the Prometheus text format, and can hand them to an existing prom-client registry (prom-client is
 * an optional peer dependency: only `registerWith()` without an argument loads it).
 */
import { MooncakeError } from '../errors';
import { requireOptional } from '../util/optional';
import { formatValue, mergeFamilies, PROMETHEUS_CONTENT_TYPE, renderText } from './text';
import { withLabels, type Labels, type MetricFamily, type MetricsSource, type MetricType } from './types';

/** What `registerWith` needs of a prom-client `Registry` (`registerMetric`; `removeSingleMetric` to undo). */
export interface PromClientRegistry {
  registerMetric(metric: never): void;
  removeSingleMetric?(name: string): void;
}

export interface MetricsRegistryOptions {
  /** Labels added to every sample (e.g. `{ node: 'prefill-0' }`). */
  labels?: Labels;
}

interface PromValue {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

/**
 * One family as a prom-client metric: prom-client asks `get()` for its values when scraped. The values
 * come from the registry's sources at that moment; `reset()` does nothing (the counters belong to the
 * components that count).
 */
class BridgedMetric {
  readonly aggregator = 'sum';
  constructor(
    public name: string,
    readonly help: string,
    readonly type: MetricType,
    private readonly family: string,
    private readonly owner: MetricsRegistry,
  ) {}

  get(): { name: string; help: string; type: MetricType; values: PromValue[]; aggregator: string } {
    const f = this.owner.familyForScrape(this.family);
    const values: PromValue[] = [];
    if (f?.type === 'histogram') {
      for (const s of f.samples) {
        let cumulative = 0;
        for (let i = 0; i <= s.bounds.length; i++) {
          cumulative += s.counts[i] ?? 0;
          const le = i < s.bounds.length ? formatValue(s.bounds[i]) : '+Inf';
          values.push({ labels: { ...s.labels, le }, value: cumulative, metricName: `${this.family}_bucket` });
        }
        values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.family}_sum` });
        values.push({ labels: { ...s.labels }, value: cumulative, metricName: `${this.family}_count` });
      }
    } else if (f) {
      for (const s of f.samples) values.push({ labels: { ...s.labels }, value: s.value });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  reset(): void {}
}

export class MetricsRegistry {
  private readonly sources = new Map<MetricsSource, Labels | undefined>();
  private readonly linked = new Map<PromClientRegistry, Set<string>>();
  private scrape: Map<string, MetricFamily> | undefined;

  constructor(private readonly options: MetricsRegistryOptions = {}) {}

  /** The content type of `metrics()` (for the HTTP answer of a scrape). */
  get contentType(): string {
    return PROMETHEUS_CONTENT_TYPE;
  }

  /**
   * Adds a source (an engine, producer, consumer, metadata server or proxy). `labels` tell apart two
   * sources that would otherwise report the same series (two proxies in one process, say).
   */
  register(source: MetricsSource, options: { labels?: Labels } = {}): this {
    if (source === null || typeof source !== 'object' || typeof source.collectMetrics !== 'function') {
      throw new MooncakeError('INVALID_ARGUMENT', 'a metrics source must have collectMetrics()');
    }
    this.sources.set(source, options.labels);
    for (const [reg, names] of this.linked) this.bridge(reg, names, this.collectFrom([source]));
    return this;
  }

  /** Removes a source; its series are gone from the next scrape. */
  unregister(source: MetricsSource): boolean {
    return this.sources.delete(source);
  }

  /** Every source's families, same-named families merged. */
  collect(): MetricFamily[] {
    return mergeFamilies(this.collectFrom([...this.sources.keys()]));
  }

  /** The Prometheus text exposition of `collect()`. */
  metrics(): string {
    return renderText(this.collect());
  }

  /**
   * Makes these metrics part of a prom-client registry (default: prom-client's global `register`), so
   * `await register.metrics()` includes them next to the application's own. Sources registered later
   * are added too. Throws when a name is taken there already.
   */
  registerWith(registry?: PromClientRegistry): this {
    const reg = registry ?? requireOptional<{ register: PromClientRegistry }>('prom-client', 'MetricsRegistry.registerWith() without a registry').register;
    if (reg === null || typeof reg !== 'object' || typeof reg.registerMetric !== 'function') {
      throw new MooncakeError('INVALID_ARGUMENT', 'registerWith() takes a prom-client Registry');
    }
    if (this.linked.has(reg)) return this;
    const names = new Set<string>();
    this.linked.set(reg, names);
    this.bridge(reg, names, this.collectFrom([...this.sources.keys()]));
    return this;
  }

  /** Takes these metrics out of a prom-client registry again. */
  unregisterFrom(registry: PromClientRegistry): void {
    const names = this.linked.get(registry);
    if (!names) return;
    for (const n of names) registry.removeSingleMetric?.(n);
    this.linked.delete(registry);
  }

  /** @internal One collection per prom-client scrape: every bridged metric of that scrape reads it. */
  familyForScrape(name: string): MetricFamily | undefined {
    if (this.scrape === undefined) {
      this.scrape = new Map(this.collect().map((f) => [f.name, f]));
      // prom-client asks every metric within one synchronous pass; the next scrape collects anew.
      queueMicrotask(() => (this.scrape = undefined));
    }
    return this.scrape.get(name);
  }

  private collectFrom(sources: MetricsSource[]): MetricFamily[] {
    const out: MetricFamily[] = [];
    for (const s of sources) {
      const labels = this.sources.get(s);
      const extra = this.options.labels || labels ? { ...this.options.labels, ...labels } : undefined;
      for (const f of s.collectMetrics()) out.push(withLabels(f, extra));
    }
    return out;
  }

  private bridge(reg: PromClientRegistry, names: Set<string>, families: MetricFamily[]): void {
    for (const f of mergeFamilies(families)) {
      if (names.has(f.name)) continue;
      try {
        reg.registerMetric(new BridgedMetric(f.name, f.help, f.type, f.name, this) as never);
      } catch (cause) {
        throw new MooncakeError('INVALID_ARGUMENT', `cannot add ${f.name} to the prom-client registry: ${(cause as Error).message}`, { cause });
      }
      names.add(f.name);
    }
  }
}
