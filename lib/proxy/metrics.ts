/**
 * Proxy metrics, as metric families (written by lib/metrics/text.ts at `/metrics`, or bridged into a
 * prom-client registry through a MetricsRegistry).
 */
import { Histogram } from '../metrics/histogram';
import { counter, gauge, histogram, type Labels, type MetricFamily } from '../metrics/types';
import type { InstancePool } from './instances';

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

type UpstreamRole = 'prefill' | 'decode';
const ROLES: readonly UpstreamRole[] = ['prefill', 'decode'];

/** The proxy's counters. Read-only from outside: the proxy changes them through the methods. */
export class ProxyMetrics {
  private readonly requestCounts = new Map<string, { endpoint: EndpointLabel; status: string; n: number }>();
  private readonly durations = new Map<EndpointLabel, Histogram>();
  private readonly prefill = new Histogram();
  private active = 0;
  private readonly retried = { prefill: 0, decode: 0 };
  private readonly timedOut = { prefill: 0, decode: 0 };
  private aborts = 0;
  private recomputed = 0;

  recordRequest(endpoint: EndpointLabel, status: number | string, seconds: number): void {
    const s = String(status);
    const key = `${endpoint} ${s}`;
    const c = this.requestCounts.get(key);
    if (c === undefined) this.requestCounts.set(key, { endpoint, status: s, n: 1 });
    else c.n++;
    let h = this.durations.get(endpoint);
    if (h === undefined) this.durations.set(endpoint, (h = new Histogram()));
    h.observe(seconds);
  }

  /** A completion request started (+1) or ended (-1). */
  inFlightChange(delta: 1 | -1): void {
    this.active += delta;
  }
  retry(role: UpstreamRole): void {
    this.retried[role]++;
  }
  timeout(role: UpstreamRole): void {
    this.timedOut[role]++;
  }
  clientAbort(): void {
    this.aborts++;
  }
  recompute(): void {
    this.recomputed++;
  }
  observePrefill(seconds: number): void {
    this.prefill.observe(seconds);
  }

  get inFlight(): number {
    return this.active;
  }

  counters(): ProxyCounters {
    const requests: Record<string, number> = {};
    for (const c of this.requestCounts.values()) requests[`${c.endpoint} ${c.status}`] = c.n;
    return { requests, inFlight: this.active, retries: { ...this.retried }, clientAborts: this.aborts, timeouts: { ...this.timedOut }, recomputes: this.recomputed };
  }

  families(pools: readonly InstancePool[]): MetricFamily[] {
    const none: Labels = {};
    const instances = pools.flatMap((p) => p.all().map((i) => i.snapshot()));
    const per = (pick: (s: (typeof instances)[number]) => number): [Labels, number][] => instances.map((s) => [{ role: s.role, instance: s.url }, pick(s)]);
    return [
      counter('mooncake_proxy_requests_total', 'Requests answered by the proxy, by endpoint and status (499: client disconnected).', [...this.requestCounts.values()].map((c) => [{ endpoint: c.endpoint, status: c.status }, c.n])),
      gauge('mooncake_proxy_requests_in_flight', 'Completion requests being handled.', [[none, this.active]]),
      histogram('mooncake_proxy_request_duration_seconds', 'Time from request to the last response byte, by endpoint.', [...this.durations].map(([endpoint, h]) => h.sample({ endpoint }))),
      histogram('mooncake_proxy_prefill_duration_seconds', 'Time of the prefill step (retries included).', [this.prefill.sample()]),
      counter('mooncake_proxy_recomputes_total', 'Re-dispatches after decode answered stop_reason "recomputed".', [[none, this.recomputed]]),
      counter('mooncake_proxy_retries_total', 'Retries after an upstream failure (connection, or HTTP error other than 400), by role.', ROLES.map((role) => [{ role }, this.retried[role]])),
      counter('mooncake_proxy_upstream_timeouts_total', 'Upstream requests that timed out, by role.', ROLES.map((role) => [{ role }, this.timedOut[role]])),
      counter('mooncake_proxy_client_aborts_total', 'Requests whose client disconnected before the response was complete.', [[none, this.aborts]]),
      gauge('mooncake_proxy_instances', 'Configured instances, by role.', pools.map((p) => [{ role: p.role }, p.size])),
      gauge('mooncake_proxy_upstream_healthy', '1 when the instance takes traffic, 0 while ejected.', per((s) => (s.healthy ? 1 : 0))),
      gauge('mooncake_proxy_upstream_in_flight', 'Requests in flight on the instance.', per((s) => s.inFlight)),
      gauge('mooncake_proxy_upstream_in_flight_tokens', 'Estimated tokens of the requests in flight on the instance.', per((s) => s.inFlightTokens)),
      counter('mooncake_proxy_upstream_requests_total', 'Attempts sent to the instance.', per((s) => s.requests)),
      counter('mooncake_proxy_upstream_connect_failures_total', 'Attempts that failed before any response byte.', per((s) => s.connectFailures)),
      counter('mooncake_proxy_upstream_ejections_total', 'Times the instance was ejected.', per((s) => s.ejections)),
    ];
  }
}
