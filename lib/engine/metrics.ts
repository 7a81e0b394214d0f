/**
 * The engine's metric families, from one native snapshot (per-peer counters and the batch latency
 * histogram, counted in C++ where the bytes move) and the engine's `stats()` (connections, notifies,
 * handshake). Built once per scrape.
 */
import type { HandshakeServerStats } from '../handshake/server';
import type { NativeMetrics, NativePeerRow } from './native';
import { counter, gauge, histogram, type Labels, type MetricFamily } from '../metrics/types';

export interface EngineMetricsInput {
  /** The engine's localServerName: the `engine` label. */
  engine: string;
  native?: NativeMetrics;
  stats: Record<string, number>;
  handshake?: HandshakeServerStats;
}

const OPS = ['read', 'write'] as const;

function perPeer(rows: { role: 'initiator' | 'target'; rows: NativePeerRow[] }[], engine: string, pick: (r: NativePeerRow) => readonly number[]): [Labels, number][] {
  const out: [Labels, number][] = [];
  for (const { role, rows: list } of rows) {
    for (const r of list) {
      const v = pick(r);
      OPS.forEach((op, i) => out.push([{ engine, peer: r.peer, role, op }, v[i]]));
    }
  }
  return out;
}

export function engineFamilies(m: EngineMetricsInput): MetricFamily[] {
  const e = { engine: m.engine };
  const s = m.stats;
  const one = (key: string, labels: Labels = e): [Labels, number][] => (s[key] === undefined ? [] : [[labels, s[key]]]);
  const n = m.native;
  const roles = n ? [{ role: 'initiator' as const, rows: n.initiator }, { role: 'target' as const, rows: n.target }] : [];
  const h = m.handshake;
  return [
    counter('mooncake_engine_bytes_total', 'Bytes moved, by peer, role (initiator: transfers this engine submitted; target: requests it served) and op.', perPeer(roles, m.engine, (r) => r.bytes)),
    counter('mooncake_engine_requests_total', 'Transfer requests (slices for the initiator, requests served for the target), by peer, role and op.', perPeer(roles, m.engine, (r) => r.ops)),
    counter('mooncake_engine_failed_requests_total', 'Transfer requests that failed (initiator) or were rejected (target), by peer, role and op.', perPeer(roles, m.engine, (r) => r.failed)),
    counter('mooncake_engine_transfers_total', 'Batches submitted through read/write/transfer that ended, by result.', n ? [[{ ...e, result: 'ok' }, n.batches.ok], [{ ...e, result: 'failed' }, n.batches.failed]] : []),
    histogram('mooncake_engine_transfer_duration_seconds', 'Time from submitting a batch to its completion, measured in the engine.', n && n.latency.counts.length > 0 ? [{ labels: e, bounds: n.latency.bounds, counts: n.latency.counts, sum: n.latency.sum }] : []),
    gauge('mooncake_engine_transfers_in_flight', 'Batches submitted and not yet settled.', one('pendingTransfers')),
    gauge('mooncake_engine_registered_regions', 'Memory regions registered.', one('registeredRegions')),
    gauge('mooncake_engine_open_segments', 'Peer segments open.', one('openSegments')),
    gauge('mooncake_engine_connections', 'Open data connections, by side (client: to peers; server: from peers).', [...one('clientConnections', { ...e, side: 'client' }), ...one('serverConnections', { ...e, side: 'server' })]),
    counter('mooncake_engine_connections_opened_total', 'Data connections opened, by side.', [...one('clientConnects', { ...e, side: 'client' }), ...one('serverConnectionsTotal', { ...e, side: 'server' })]),
    counter('mooncake_engine_connections_refused_total', 'Data connections refused: not allowed, or no free slot (evictions included).', one('serverConnectionsRefused')),
    counter('mooncake_engine_connections_evicted_total', 'Silent data connections closed to give their slot to a new one.', one('serverConnectionsEvicted')),
    counter('mooncake_engine_first_byte_timeouts_total', 'Data connections closed for sending nothing within firstByteTimeoutMs.', one('serverConnectionsSilent')),
    counter('mooncake_engine_stalled_connections_total', 'Data connections closed for stalling mid-request longer than idleTimeoutMs.', one('serverConnectionsTimedOut')),
    counter('mooncake_engine_rejected_requests_total', 'Requests refused by the data server (outside every registered region, or not applied).', one('requestsRejected')),
    counter('mooncake_engine_retries_total', 'Requests resent after another request\'s connection failed.', one('retries')),
    counter('mooncake_engine_same_host_bytes_total', 'Bytes copied through shared memory to or from peers on this host (also in bytes_total).', one('sameHostBytes')),
    counter('mooncake_engine_notifies_received_total', 'Notifies received.', one('notifiesReceived')),
    gauge('mooncake_engine_notify_queue_depth', 'Notifies received and not yet taken.', one('notifiesQueued')),
    gauge('mooncake_engine_notify_queue_bytes', 'Bytes of the notifies queued.', one('notifiesQueuedBytes')),
    counter('mooncake_engine_notifies_dropped_total', 'Notifies lost: dropped from a full queue (overflow) or refused (rejected).', [...one('notifiesDropped', { ...e, reason: 'overflow' }), ...one('notifiesRejected', { ...e, reason: 'rejected' })]),
    gauge('mooncake_engine_handshake_connections', 'Open handshake connections.', h ? [[e, h.active]] : []),
    counter('mooncake_engine_handshake_accepted_total', 'Handshake connections accepted.', h ? [[e, h.accepted]] : []),
    counter('mooncake_engine_handshake_dropped_total', 'Handshake connections dropped, by reason (refused and overload: no slot; evicted; timeout: no byte or no full frame in time; ...).',
      h ? Object.entries(h.dropped).map(([reason, v]) => [{ ...e, reason }, v] as [Labels, number]) : []),
    counter('mooncake_engine_metadata_republished_total', 'Times the segment descriptor was found missing or changed and published again.', one('metadataRepublished')),
  ];
}
