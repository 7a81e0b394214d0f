// Hostile peers against the KV layer: "done" floods into a KvProducer that its application runs as usual
// (it listens to events and never calls getNotifies()). Each done names an unknown request; the big ones
// list 100 000 failed block ids (~590 KB). About 2 200 of those used to kill the producer (V8 heap limit):
// the engine's notify queue and the producer's early-"done" buffer kept every one (docs/reliability.md). Now a KV message larger
// than the layout allows is refused unread, one without the request token is refused on arrival, KV
// messages never wait in the engine's notify buffer, and the early buffer is bounded by bytes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, isMooncakeError } from '../../lib';
import { sendNotify } from '../../lib/handshake';
import { KV_NOTIFY_NAME, encodeKvMessage } from '../../lib/kv';
import { KvGroup } from '../kv/group';
import { MiB, procSample } from './helpers/proc';

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
  engines: { stats: Record<string, number> }[];
}
type Metrics = { metrics: { refused: Record<string, number>; early: { held: number; bytes: number }; holds: { active: number } } }[];

/** Sends `count` notifies made by `make(i)`, `concurrency` at a time; tallies the answers by code. */
async function flood(port: number, count: number, concurrency: number, make: (i: number) => { name: string; msg: string }): Promise<Record<string, number>> {
  const tally: Record<string, number> = {};
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const i = next++;
        let code = 'ACK';
        try {
          await sendNotify('127.0.0.1', port, make(i), { timeoutMs: 20_000, connectTimeoutMs: 5000 });
        } catch (err) {
          code = isMooncakeError(err) ? err.code : 'ERROR';
        }
        tally[code] = (tally[code] ?? 0) + 1;
      }
    }),
  );
  return tally;
}

describe('done flood into a KvProducer', () => {
  let meta: MetadataServer;
  let prefill: KvGroup;
  let port: number;
  const layout = { numLayers: 2, numBlocks: 4096, blockSize: 16, headBytes: 128, numHeads: 1 };
  const from = { engine_id: 'evil', dp_rank: 0, tp_rank: 0, tp_size: 1, host: '10.6.6.6', rpc_port: 1 };
  const live = (m: Memory) => m.heapUsed + m.external;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    const parallel = { prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 } };
    prefill = await KvGroup.spawn({ role: 'producer', engineId: 'p', metadataServer: url, ...parallel, layout });
    const entry = JSON.parse(meta.entries().get('mooncake/kv/p/0/0')!) as { rpc_port: number };
    port = entry.rpc_port;
  });

  afterAll(async () => {
    await prefill?.close();
    await meta?.close();
  });

  it('200 dones of ~590 KB (100 000 failed block ids, unknown requests): all refused unread, memory flat', async () => {
    const before = await prefill.call<Memory>('memory');
    const ids = Array.from({ length: 100_000 }, (_, i) => i);
    const text = encodeKvMessage({ type: 'done', request_id: 'forged-#', from, ok: false, failed_block_ids: ids }).msg;
    const big = (i: number) => ({ name: KV_NOTIFY_NAME, msg: text.replace('forged-#', `forged-${i}`) });
    let peak = before.rss;
    const sampler = setInterval(() => (peak = Math.max(peak, procSample(prefill.child.pid!).rss)), 50);
    const t0 = performance.now();
    let tally: Record<string, number>;
    try {
      tally = await flood(port, 200, 8, big);
    } finally {
      clearInterval(sampler);
    }
    const secs = (performance.now() - t0) / 1000;
    const after = await prefill.call<Memory>('memory');
    const [m] = await prefill.call<Metrics>('metrics');
    const stats = after.engines[0]!.stats;
    console.log(
      `[kv-flood] 200 x ${(text.length / 1024).toFixed(0)} KiB dones in ${secs.toFixed(1)} s: answers ${JSON.stringify(tally)}; refused ${JSON.stringify(m!.metrics.refused)}; ` +
        `early kept ${m!.metrics.early.held}; engine queued ${stats.notifiesQueued ?? '-'}; heap ${(before.heapUsed / MiB).toFixed(0)} -> ${(after.heapUsed / MiB).toFixed(0)} MiB, external ${(before.external / MiB).toFixed(0)} -> ${(after.external / MiB).toFixed(0)} MiB; ` +
        `RSS ${(before.rss / MiB).toFixed(0)} -> peak ${(peak / MiB).toFixed(0)} -> ${(after.rss / MiB).toFixed(0)} MiB`,
    );
    expect(tally['REJECT_HANDSHAKE']).toBe(200); // each sender is told
    expect(m!.metrics.refused['too-large']).toBe(200);
    expect(m!.metrics.early.held).toBe(0);
    expect(stats.notifiesQueued ?? 0).toBe(0);
    // Keeping them would be ~1.4 MiB of heap each (the string and the parsed ids). What is left is
    // buffers the handshake daemon read them into, which the allocator returns lazily.
    expect(after.heapUsed - before.heapUsed).toBeLessThan(8 * MiB);
    expect(live(after) - live(before)).toBeLessThan(48 * MiB);
  }, 120_000);

  it('5000 small dones without the request token: refused on arrival, nothing kept', async () => {
    const before = await prefill.call<Memory>('memory');
    const small = (i: number) => encodeKvMessage({ type: 'done', request_id: `forged-small-${i}`, from, ok: true, failed_block_ids: [], token: 'A'.repeat(22) });
    const tally = await flood(port, 5000, 16, small);
    const after = await prefill.call<Memory>('memory');
    const [m] = await prefill.call<Metrics>('metrics');
    console.log(`[kv-flood] 5000 tokenless dones: answers ${JSON.stringify(tally)}; refused ${JSON.stringify(m!.metrics.refused)}; live heap+external ${(live(before) / MiB).toFixed(0)} -> ${(live(after) / MiB).toFixed(0)} MiB`);
    expect(tally['REJECT_HANDSHAKE']).toBe(5000);
    expect(m!.metrics.refused['bad-token']).toBe(5000);
    expect(m!.metrics.early.held).toBe(0);
    expect(live(after) - live(before)).toBeLessThan(16 * MiB);
  }, 120_000);

  it('the early buffer, filled by dones that do carry tokens, stays within earlyMessages.maxBytes', async () => {
    const rids = Array.from({ length: 400 }, (_, i) => `early-${i}`);
    const tokens = await prefill.call<string[]>('tokens', { dp: 0, requestIds: rids });
    // 4096 failed ids each (every block): ~34 KB as kept, so 4 MiB holds about 120 of them.
    const all = Array.from({ length: 4096 }, (_, i) => i);
    const text = encodeKvMessage({ type: 'done', request_id: '#rid', from: { ...from, engine_id: 'd' }, ok: false, failed_block_ids: all, token: '#token' }).msg;
    const tally = await flood(port, rids.length, 8, (i) => ({ name: KV_NOTIFY_NAME, msg: text.replace('#rid', rids[i]!).replace('#token', tokens[i]!) }));
    const [m] = await prefill.call<Metrics>('metrics');
    console.log(`[kv-flood] 400 early dones with tokens and 4096 failed ids: answers ${JSON.stringify(tally)}; early ${JSON.stringify(m!.metrics.early)}; refused early-full ${m!.metrics.refused['early-full']}`);
    expect(m!.metrics.early.bytes).toBeLessThanOrEqual(4 * MiB);
    expect(m!.metrics.early.held + m!.metrics.refused['early-full']).toBe(rids.length);
    expect(tally['REJECT_HANDSHAKE']).toBe(m!.metrics.refused['early-full']);
  }, 120_000);
});
