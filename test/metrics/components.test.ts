// KV ranks, the metadata server and the proxy report through the same registry: values checked against
// what happened (a pull's bytes and its hold's release, answers by status), and the proxy's /metrics is
// exactly what a MetricsRegistry writes for it.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { MetadataServer, MetricsRegistry } from '../../lib';
import { KvConsumer, KvProducer, fillKvPattern, patternSeed, type KvLayoutSpec } from '../../lib/kv';
import { Harness, request } from '../proxy/stand-ins';
import { parseText, value } from './helpers';

const common = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' };

describe('KV, metadata server and proxy metrics', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('a pull: transfers, bytes and duration on the consumer; the hold and its release on the producer', async () => {
    const layout: KvLayoutSpec = { numLayers: 2, numBlocks: 8, blockSize: 4, headBytes: 16, numHeads: 2 };
    const parallel = { prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 } };
    const producer = await KvProducer.create({ engineId: 'mp', ...parallel, layout, totalKvHeads: 2, metadataServer: url, engineOptions: common });
    const consumer = await KvConsumer.create({ engineId: 'md', ...parallel, layout, totalKvHeads: 2, metadataServer: url, engineOptions: common });
    try {
      fillKvPattern(producer.caches, { seed: patternSeed('r1'), blockIds: [1, 2], headStart: 0 });
      const hold = producer.hold('r1', [1, 2]);
      const outcome = await consumer.pull(hold.params, [3, 4]);
      expect(outcome.ok).toBe(true);
      expect((await hold.released).reason).toBe('done');
      // The producer got "done" before the consumer's send saw its acknowledgement.
      await vi.waitFor(() => expect(consumer.metrics().notifies.sent).toBe(1), { timeout: 5000 });
      const reg = new MetricsRegistry().register(producer).register(consumer).register(consumer.engine).register(meta);
      const s = parseText(reg.metrics());
      const d = { side: 'decode', engine: consumer.engine.localServerName };
      expect(value(s, 'mooncake_kv_transfers_total', { ...d, direction: 'read', result: 'ok' })).toBe(1);
      expect(value(s, 'mooncake_kv_transfers_total', { ...d, direction: 'read', result: 'failed' })).toBe(0);
      expect(value(s, 'mooncake_kv_bytes_total', { ...d, direction: 'read' })).toBe(outcome.bytes);
      expect(value(s, 'mooncake_kv_transfer_duration_seconds_count', { ...d, direction: 'read' })).toBe(1);
      expect(value(s, 'mooncake_kv_transfers_in_flight', d)).toBe(0);
      expect(value(s, 'mooncake_kv_notifies_sent_total', d)).toBe(1);
      expect(value(s, 'mooncake_kv_expectations', d)).toBe(0);
      const p = { side: 'prefill' };
      expect(value(s, 'mooncake_kv_holds', p)).toBe(0);
      expect(value(s, 'mooncake_kv_holds_released_total', { ...p, reason: 'done' })).toBe(1);
      expect(value(s, 'mooncake_kv_holds_released_total', { ...p, reason: 'abort-timeout' })).toBe(0);
      expect(value(s, 'mooncake_kv_notifies_received_total', p)).toBe(1);
      expect(value(s, 'mooncake_kv_refused_messages_total', { ...p, reason: 'early-full' })).toBe(0);
      expect(value(s, 'mooncake_kv_failures_total', { ...p, stage: 'TIMEOUT' })).toBe(0);
      expect(value(s, 'mooncake_kv_early_messages', p)).toBe(0);
      expect(value(s, 'mooncake_kv_stale_blocks_total', d)).toBe(0);
      // The consumer's engine pulled those bytes from the producer's engine (and the hold fence, a few bytes).
      const engineRead = value(s, 'mooncake_engine_bytes_total', { engine: d.engine, role: 'initiator', op: 'read' });
      expect(engineRead).toBeGreaterThanOrEqual(outcome.bytes);
      expect(engineRead).toBeLessThan(outcome.bytes + 4096);
      // The metadata server answered the ranks' PUTs and GETs.
      expect(value(s, 'mooncake_metadata_requests_total', { method: 'PUT', status: '200' })).toBeGreaterThanOrEqual(2);
      expect(value(s, 'mooncake_metadata_entries')).toBe(meta.stats().entries);
      // The snapshot API agrees with the families.
      expect(consumer.metrics().bytes).toBe(outcome.bytes);
      expect(producer.metrics().holds?.released.done).toBe(1);
    } finally {
      await producer.close();
      await consumer.close();
    }
  });

  it('the metadata server counts refused answers by status', async () => {
    const before = parseText(new MetricsRegistry().register(meta).metrics());
    const missing = (): number => {
      try {
        return value(parseText(new MetricsRegistry().register(meta).metrics()), 'mooncake_metadata_requests_total', { method: 'GET', status: '404' });
      } catch {
        return 0;
      }
    };
    const n0 = missing();
    expect((await fetch(`${url}?key=nothing-here`)).status).toBe(404);
    expect(missing()).toBe(n0 + 1);
    expect(before.size).toBeGreaterThan(0);
  });

  describe('proxy', () => {
    const h = new Harness();
    afterAll(() => h.closeAll());
    it('/metrics is what a MetricsRegistry writes for the proxy', async () => {
      const prefill = await h.standIn({ role: 'prefill' });
      const decode = await h.standIn({ role: 'decode' });
      const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
      expect((await request(addr.url, '/v1/completions', { body: { prompt: 'a' } })).status).toBe(200);
      await request(addr.url, '/metrics'); // counted from the next scrape on
      const served = (await request(addr.url, '/metrics')).text;
      // The registry scrapes after that /metrics answer was counted: compare everything else.
      const own = (t: string): string => t.split('\n').filter((l) => !l.includes('endpoint="/metrics"')).join('\n');
      expect(own(served)).toBe(own(new MetricsRegistry().register(proxy).metrics()));
      expect(value(parseText(served), 'mooncake_proxy_requests_total', { endpoint: '/v1/completions', status: '200' })).toBe(1);
    });
  });
});
