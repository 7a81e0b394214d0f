// Engine metrics counted in C++ where the bytes move, read in one call per scrape: per-peer bytes and
// requests on both sides (checked against the bytes actually moved), failures, the latency histogram,
// the bounded peer table and the switch that turns it off.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MetricsRegistry, TransferEngine } from '../../lib';
import { names, parseText, value } from './helpers';

const local = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' };
const MiB = 1 << 20;

describe('engine metrics', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('counts bytes and requests per peer on both sides, failures, and the latency of every batch', async () => {
    const a = await TransferEngine.create({ metadataServer: url, ...local, sliceSize: 64 * 1024 });
    const b = await TransferEngine.create({ metadataServer: url, ...local });
    try {
      const data = randomBytes(MiB);
      const ra = await a.registerMemory(Buffer.from(data));
      const rb = await b.registerMemory(Buffer.alloc(2 * MiB));
      const seg = await a.openSegment(b.localServerName);
      await a.write(seg, [{ local: ra, remote: seg.address(0, 0, MiB), length: MiB }]); // 16 slices of 64 KiB
      ra.buffer!.fill(0);
      await a.read(seg, [
        { local: ra, localOffset: 0, remote: seg.address(0, 0, 4096), length: 4096 },
        { local: ra, localOffset: 4096, remote: seg.address(0, 4096, MiB - 4096), length: MiB - 4096 },
      ]);
      expect(ra.buffer!.equals(data)).toBe(true);
      // A request the peer refuses: its region went away after we read its descriptor.
      await rb.unregister();
      await expect(a.read(seg, [{ local: ra, remote: seg.address(0, 0, 4096), length: 4096 }])).rejects.toMatchObject({ code: 'REMOTE_REJECTED' });

      const s = parseText(new MetricsRegistry().register(a).register(b).metrics());
      const bPeer = `127.0.0.1:${seg.dataPort}`;
      const ini = { engine: a.localServerName, role: 'initiator' };
      const tgt = { engine: b.localServerName, role: 'target', peer: '127.0.0.1' };
      expect(value(s, 'mooncake_engine_bytes_total', { ...ini, op: 'write' })).toBe(MiB);
      expect(value(s, 'mooncake_engine_bytes_total', { ...ini, op: 'read' })).toBe(MiB);
      expect(value(s, 'mooncake_engine_requests_total', { ...ini, op: 'write' })).toBe(16);
      expect(value(s, 'mooncake_engine_failed_requests_total', { ...ini, op: 'read' })).toBe(1);
      expect(value(s, 'mooncake_engine_bytes_total', { ...tgt, op: 'write' })).toBe(MiB);
      expect(value(s, 'mooncake_engine_bytes_total', { ...tgt, op: 'read' })).toBe(MiB);
      expect(value(s, 'mooncake_engine_requests_total', { ...tgt, op: 'write' })).toBe(16);
      expect(value(s, 'mooncake_engine_failed_requests_total', { ...tgt, op: 'read' })).toBe(1);
      expect(value(s, 'mooncake_engine_rejected_requests_total', { engine: b.localServerName })).toBe(1);
      expect([...s.keys()].some((k) => k.includes(`peer="${bPeer}"`))).toBe(true);
      // Three batches: two succeeded, one failed; each one observed once in the histogram.
      expect(value(s, 'mooncake_engine_transfers_total', { engine: a.localServerName, result: 'ok' })).toBe(2);
      expect(value(s, 'mooncake_engine_transfers_total', { engine: a.localServerName, result: 'failed' })).toBe(1);
      expect(value(s, 'mooncake_engine_transfer_duration_seconds_count', { engine: a.localServerName })).toBe(3);
      expect(value(s, 'mooncake_engine_transfer_duration_seconds_bucket', { engine: a.localServerName, le: '+Inf' })).toBe(3);
      expect(value(s, 'mooncake_engine_transfer_duration_seconds_sum', { engine: a.localServerName })).toBeGreaterThan(0);
      expect(value(s, 'mooncake_engine_connections_opened_total', { engine: a.localServerName, side: 'client' })).toBe(2);
      expect(value(s, 'mooncake_engine_open_segments', { engine: a.localServerName })).toBe(1);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('keeps at most metricsMaxPeers peers apart and counts the rest as "other"', async () => {
    const a = await TransferEngine.create({ metadataServer: url, ...local, metricsMaxPeers: 1 });
    const peers = [await TransferEngine.create({ metadataServer: url, ...local }), await TransferEngine.create({ metadataServer: url, ...local })];
    try {
      const ra = await a.registerMemory(Buffer.alloc(8192));
      for (const p of peers) {
        await p.registerMemory(Buffer.alloc(8192));
        const seg = await a.openSegment(p.localServerName);
        await a.write(seg, [{ local: ra, remote: seg.address(0, 0, 4096), length: 4096 }]);
        await a.write(seg, [{ local: ra, remote: seg.address(0, 0, 4096), length: 4096 }]);
      }
      const s = parseText(new MetricsRegistry().register(a).metrics());
      const rows = names(s, 'mooncake_engine_bytes_total{').filter((k) => k.includes('op="write"'));
      expect(rows).toHaveLength(2);
      expect(value(s, 'mooncake_engine_bytes_total', { peer: 'other', op: 'write' })).toBe(8192);
      expect(rows.filter((k) => !k.includes('peer="other"')).map((k) => s.get(k))).toEqual([8192]);
    } finally {
      await Promise.all([a.close(), ...peers.map((p) => p.close())]);
    }
  });

  it('metricsMaxPeers 0 turns the per-peer counters and the histogram off; the totals stay', async () => {
    const a = await TransferEngine.create({ metadataServer: url, ...local, metricsMaxPeers: 0 });
    const b = await TransferEngine.create({ metadataServer: url, ...local });
    try {
      const ra = await a.registerMemory(Buffer.alloc(8192));
      await b.registerMemory(Buffer.alloc(8192));
      const seg = await a.openSegment(b.localServerName);
      await a.write(seg, [{ local: ra, remote: seg.address(0, 0, 4096), length: 4096 }]);
      const s = parseText(new MetricsRegistry().register(a).metrics());
      expect(names(s, 'mooncake_engine_bytes_total{')).toEqual([]);
      expect(names(s, 'mooncake_engine_transfer_duration_seconds')).toEqual([]);
      expect(value(s, 'mooncake_engine_transfers_total', { result: 'ok' })).toBe(1);
      expect(a.stats().bytesSent).toBeGreaterThanOrEqual(4096);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
    await expect(TransferEngine.create({ metadataServer: url, ...local, metricsMaxPeers: -1 })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });

  it('a closed engine reports its families without samples', async () => {
    const a = await TransferEngine.create({ metadataServer: url, ...local });
    await a.close();
    const text = new MetricsRegistry().register(a).metrics();
    expect(text).toContain('# TYPE mooncake_engine_bytes_total counter');
    expect([...parseText(text).keys()]).toEqual([]);
  });
});
