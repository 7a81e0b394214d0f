/**
 * Proxy metrics and their Prometheus text exposition (format 0.0.4).
 */
import type { InstancePool } from './instances';

/** Latency histogram bucket upper bounds, in seconds. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** Endpoint labels; anything else is counted as 'other' so label values stay bounded. */
export type EndpointLabel =
  | '/v1/completions'
  | '/v1/chat/completions'
  | '/v1/models'
  | '/healthcheck'
  | '/metrics'
  | '/admin/instances'
  | '/reset_prefix_cache'
  | '/v1/metaserver'
  | 'other';

export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly buckets: readonly number[] = LATENCY_BUCKETS_SECONDS) {
    this.counts = new Array<number>(buckets.length).fill(0);
  }

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    for (let i = 0; i < this.buckets.length; i++) {
      if (seconds <= this.buckets[i]) {
        this.counts[i]++;
        return;
      }
    }
  }
}

export interface ProxyCounters {
  /** Requests finished, by endpoint and status ('499' when the client went away first). */
  requests: Record<string, number>;
  inFlight: number;
  /** Retries after connection failures, by role. */
  retries: { prefill: number; decode: number };
  /** Requests whose client disconnected before the response was complete. */
  clientAborts: number;
  /** Upstream timeouts, by role. */
  timeouts: { prefill: number; decode: number };
  /** Re-dispatches after decode answered `stop_reason: "recomputed"`. */
  recomputes: number;
}

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function fmt(n: number): string {
  if (n === Infinity) return '+Inf';
  return Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(12)));
}

export class ProxyMetrics {
  private readonly requestCounts = new Map<string, { endpoint: EndpointLabel; status: string; n: number }>();
  private readonly durations = new Map<EndpointLabel, Histogram>();
  readonly prefillDuration = new Histogram();
  inFlight = 0;
  retries = { prefill: 0, decode: 0 };
  timeouts = { prefill: 0, decode: 0 };
  clientAborts = 0;
  recomputes = 0;

  recordRequest(endpoint: EndpointLabel, status: number | string, seconds: number): void {
    const s = String(status);
    const key = `${endpoint} ${s}`;
    const c = this.requestCounts.get(key);
    if (c === undefined) this.requestCounts.set(key, { endpoint, status: s, n: 1 });
    else c.n++;
    let h = this.durations.get(endpoint);
    if (h === undefined) {
      h = new Histogram();
      this.durations.set(endpoint, h);
    }
    h.observe(seconds);
  }

  counters(): ProxyCounters {
    const requests: Record<string, number> = {};
    for (const c of this.requestCounts.values()) requests[`${c.endpoint} ${c.status}`] = c.n;
    return { requests, inFlight: this.inFlight, retries: { ...this.retries }, clientAborts: this.clientAborts, timeouts: { ...this.timeouts }, recomputes: this.recomputes };
  }

  render(pools: readonly InstancePool[]): string {
    const out: string[] = [];
    const head = (name: string, type: string, help: string): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    };
    head('mooncake_proxy_requests_total', 'counter', 'Requests answered by the proxy, by endpoint and status (499: client disconnected).');
    for (const c of this.requestCounts.values()) {
      out.push(`mooncake_proxy_requests_total{endpoint="${esc(c.endpoint)}",status="${esc(c.status)}"} ${c.n}`);
    }
    head('mooncake_proxy_requests_in_flight', 'gauge', 'Completion requests being handled.');
    out.push(`mooncake_proxy_requests_in_flight ${this.inFlight}`);
    head('mooncake_proxy_request_duration_seconds', 'histogram', 'Time from request to the last response byte, by endpoint.');
    for (const [endpoint, h] of this.durations) this.histogram(out, 'mooncake_proxy_request_duration_seconds', `endpoint="${esc(endpoint)}"`, h);
    head('mooncake_proxy_prefill_duration_seconds', 'histogram', 'Time of the prefill step (retries included).');
    this.histogram(out, 'mooncake_proxy_prefill_duration_seconds', '', this.prefillDuration);
    head('mooncake_proxy_recomputes_total', 'counter', 'Re-dispatches after decode answered stop_reason "recomputed".');
    out.push(`mooncake_proxy_recomputes_total ${this.recomputes}`);
    head('mooncake_proxy_retries_total', 'counter', 'Retries after an upstream failure (connection, or HTTP error other than 400), by role.');
    for (const role of ['prefill', 'decode'] as const) out.push(`mooncake_proxy_retries_total{role="${role}"} ${this.retries[role]}`);
    head('mooncake_proxy_upstream_timeouts_total', 'counter', 'Upstream requests that timed out, by role.');
    for (const role of ['prefill', 'decode'] as const) out.push(`mooncake_proxy_upstream_timeouts_total{role="${role}"} ${this.timeouts[role]}`);
    head('mooncake_proxy_client_aborts_total', 'counter', 'Requests whose client disconnected before the response was complete.');
    out.push(`mooncake_proxy_client_aborts_total ${this.clientAborts}`);

    const instances = pools.flatMap((p) => p.all().map((i) => i.snapshot()));
    const labels = (s: { role: string; url: string }): string => `role="${s.role}",instance="${esc(s.url)}"`;
    head('mooncake_proxy_instances', 'gauge', 'Configured instances, by role.');
    for (const p of pools) out.push(`mooncake_proxy_instances{role="${p.role}"} ${p.size}`);
    head('mooncake_proxy_upstream_healthy', 'gauge', '1 when the instance takes traffic, 0 while ejected.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_healthy{${labels(s)}} ${s.healthy ? 1 : 0}`);
    head('mooncake_proxy_upstream_in_flight', 'gauge', 'Requests in flight on the instance.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_in_flight{${labels(s)}} ${s.inFlight}`);
    head('mooncake_proxy_upstream_in_flight_tokens', 'gauge', 'Estimated tokens of the requests in flight on the instance.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_in_flight_tokens{${labels(s)}} ${s.inFlightTokens}`);
    head('mooncake_proxy_upstream_requests_total', 'counter', 'Attempts sent to the instance.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_requests_total{${labels(s)}} ${s.requests}`);
    head('mooncake_proxy_upstream_connect_failures_total', 'counter', 'Attempts that failed before any response byte.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_connect_failures_total{${labels(s)}} ${s.connectFailures}`);
    head('mooncake_proxy_upstream_ejections_total', 'counter', 'Times the instance was ejected.');
    for (const s of instances) out.push(`mooncake_proxy_upstream_ejections_total{${labels(s)}} ${s.ejections}`);
    return out.join('\n') + '\n';
  }

  private histogram(out: string[], name: string, labels: string, h: Histogram): void {
    const sep = labels === '' ? '' : ',';
    let cumulative = 0;
    for (let i = 0; i < h.buckets.length; i++) {
      cumulative += h.counts[i];
      out.push(`${name}_bucket{${labels}${sep}le="${fmt(h.buckets[i])}"} ${cumulative}`);
    }
    out.push(`${name}_bucket{${labels}${sep}le="+Inf"} ${h.count}`);
    const braces = labels === '' ? '' : `{${labels}}`;
    out.push(`${name}_sum${braces} ${fmt(h.sum)}`, `${name}_count${braces} ${h.count}`);
  }
}
