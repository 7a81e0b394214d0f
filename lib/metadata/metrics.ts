/**
 * The metadata server's metrics: answers by method and status, answer time, and the store's gauges.
 */
import { Histogram } from '../metrics/histogram';
import { counter, gauge, histogram, type Labels, type MetricFamily } from '../metrics/types';

/** The metadata server's gauges (MetadataServer#stats). */
export interface MetadataServerStats {
  /** Live entries. */
  entries: number;
  /** Bytes of their keys and values (bounded by maxStoreBytes). */
  storeBytes: number;
  /** Bytes of the persistence log on disk (0 without dataDir). */
  logBytes: number;
  /** Times the log was compacted (rewritten from the live entries). */
  logCompactions: number;
  /** Connections closed because their address is not in allowedPeers. */
  refusedConnections: number;
  /** Bytes of request bodies being received right now (bounded by maxBufferedBytes). */
  bufferedBytes: number;
}

const METHODS = new Set(['GET', 'PUT', 'DELETE', 'POST', 'HEAD']);

export class MetadataServerMetrics {
  private readonly answers = new Map<string, { method: string; status: string; n: number }>();
  private readonly durations = new Map<string, Histogram>();

  answered(method: string, status: number, seconds: number): void {
    const m = METHODS.has(method) ? method : 'other';
    const key = `${m} ${status}`;
    const a = this.answers.get(key);
    if (a) a.n++;
    else this.answers.set(key, { method: m, status: String(status), n: 1 });
    let h = this.durations.get(m);
    if (h === undefined) this.durations.set(m, (h = new Histogram()));
    h.observe(seconds);
  }

  families(s: MetadataServerStats): MetricFamily[] {
    const none: Labels = {};
    return [
      counter('mooncake_metadata_requests_total', 'Requests answered, by method and status (4xx/5xx: refused or failed).', [...this.answers.values()].map((a) => [{ method: a.method, status: a.status }, a.n])),
      histogram('mooncake_metadata_request_duration_seconds', 'Time from a request to its answer, by method.', [...this.durations].map(([method, h]) => h.sample({ method }))),
      gauge('mooncake_metadata_entries', 'Live entries.', [[none, s.entries]]),
      gauge('mooncake_metadata_store_bytes', 'Bytes of keys and values held.', [[none, s.storeBytes]]),
      gauge('mooncake_metadata_log_bytes', 'Bytes of the persistence log.', [[none, s.logBytes]]),
      counter('mooncake_metadata_log_compactions_total', 'Times the persistence log was rewritten from the live entries.', [[none, s.logCompactions]]),
      counter('mooncake_metadata_refused_connections_total', 'Connections closed because their address is not allowed.', [[none, s.refusedConnections]]),
      gauge('mooncake_metadata_buffered_bytes', 'Bytes of request bodies being received.', [[none, s.bufferedBytes]]),
    ];
  }
}
