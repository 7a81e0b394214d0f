// The KV handshake on every metadata backend (HTTP, etcd, redis — real servers on loopback): ranks publish
// their registry entries there, a consumer pulls and is pushed to with bytes verified, a closed rank's
// entry disappears, and an emptied backend is repopulated by the ranks' heartbeats and engine refresh.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMooncakeError } from '../../lib';
import { KvConsumer, KvProducer, checkKvPattern, fillKvPattern, heldHeads, kvRankKey, patternSeed, type KvLayoutSpec } from '../../lib/kv';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { eventually } from '../helpers/etcd';
import { metadataBackends, type RunningBackend } from '../helpers/metadata-backends';

const engineOptions = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', metadataRefreshMs: 200 } as const;
const totalKvHeads = 4;
const layoutP: KvLayoutSpec = { numLayers: 2, numBlocks: 16, blockSize: 4, headBytes: 32, numHeads: 2 };
const layoutD: KvLayoutSpec = { ...layoutP, numHeads: 4 };
const parallel = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 } };
/** Bytes one decode block receives: K and V, every layer, all heads. */
const blockBytes = 2 * layoutD.numLayers * layoutD.blockSize * layoutD.numHeads! * layoutD.headBytes;

for (const b of metadataBackends('kv-backends')) {
  describe.skipIf(b.skip)(`KV handshake on ${b.kind}`, () => {
    let backend: RunningBackend;
    let inspect: MetadataStore;
    const producers: KvProducer[] = [];
    let consumer: KvConsumer;
    const engineId = `p-${b.kind}`;

    beforeAll(async () => {
      backend = await b.start();
      inspect = createMetadataStore(backend.conn);
      for (let tp = 0; tp < 2; tp++) {
        producers.push(
          await KvProducer.create({ engineId, tpRank: tp, ...parallel, layout: layoutP, totalKvHeads, metadataServer: backend.conn, heartbeatMs: 200, engineOptions }),
        );
      }
      consumer = await KvConsumer.create({ engineId: `d-${b.kind}`, ...parallel, layout: layoutD, totalKvHeads, metadataServer: backend.conn, heartbeatMs: 200, engineOptions });
      for (const r of [...producers, consumer]) r.engine.on('metadataError', () => undefined); // restarts below
    });

    afterAll(async () => {
      for (const p of producers) await p.close();
      await consumer?.close();
      await inspect?.close();
      await backend?.cleanup();
    });

    function fill(rid: string, blocks: number[]): void {
      for (const p of producers) fillKvPattern(p.caches, { seed: patternSeed(rid), blockIds: blocks, headStart: heldHeads('mha', totalKvHeads, 2, p.tpRank).start });
    }

    async function pullAndVerify(rid: string, pBlocks: number[], dBlocks: number[]): Promise<void> {
      fill(rid, pBlocks);
      const holds = producers.map((p) => p.hold(rid, pBlocks));
      const outcome = await consumer.pull(holds[0].params, dBlocks);
      expect(outcome.error).toBeUndefined();
      expect(outcome).toMatchObject({ ok: true, failedBlockIds: [], bytes: dBlocks.length * blockBytes });
      const check = checkKvPattern(consumer.caches, { seed: patternSeed(rid), blockIds: dBlocks, headStart: 0 });
      expect(check).toEqual({ mismatches: 0, bytes: dBlocks.length * blockBytes });
      for (const h of holds) expect((await h.released).reason).toBe('done');
    }

    it('publishes each rank under its KV key in the backend', async () => {
      for (const p of producers) {
        const text = await inspect.get(kvRankKey(engineId, 0, p.tpRank));
        expect(text).toBeDefined();
        expect(JSON.parse(text!)).toMatchObject({ engine_id: engineId, dp_rank: 0, tp_rank: p.tpRank, rpc_port: p.engine.rpcPort });
      }
      expect(await inspect.get(kvRankKey(`d-${b.kind}`, 0, 0))).toBeDefined();
    });

    it('pulls from both tp ranks with bytes verified', async () => {
      await pullAndVerify('pull-1', [1, 2, 3, 9], [4, 5, 6, 7]);
    });

    it('is pushed to by both tp ranks with bytes verified', async () => {
      const rid = 'push-1';
      const pBlocks = [10, 11];
      const dBlocks = [12, 3];
      fill(rid, pBlocks);
      const x = consumer.expect(rid, dBlocks, { timeoutMs: 10_000 });
      const outcomes = await Promise.all(producers.map((p) => p.push(x.params, pBlocks)));
      for (const o of outcomes) expect(o).toMatchObject({ ok: true });
      expect((await x.done).ok).toBe(true);
      expect(checkKvPattern(consumer.caches, { seed: patternSeed(rid), blockIds: dBlocks, headStart: 0 }).mismatches).toBe(0);
    });

    it('a closed rank leaves the backend, and pulls from it fail with SEGMENT_NOT_FOUND', async () => {
      const gone = await KvProducer.create({ engineId: `gone-${b.kind}`, tpRank: 0, ...parallel, layout: layoutP, totalKvHeads, metadataServer: backend.conn, engineOptions });
      const key = kvRankKey(`gone-${b.kind}`, 0, 0);
      expect(await inspect.get(key)).toBeDefined();
      const params = gone.hold('orphan', [1]).params;
      await gone.close();
      expect(await inspect.get(key)).toBeUndefined();
      const outcome = await consumer.pull(params, [8]);
      expect(outcome).toMatchObject({ ok: false, failedBlockIds: [8] });
      expect(isMooncakeError(outcome.error) && outcome.error.code).toBe('SEGMENT_NOT_FOUND');
    });

    it('after the backend restarts empty, heartbeats and engine refresh republish and pulls work again', async () => {
      await backend.restartEmpty();
      await inspect.close();
      inspect = createMetadataStore(backend.conn);
      const keys = [...producers.map((p) => kvRankKey(engineId, 0, p.tpRank)), ...producers.map((p) => `mooncake/ram/${p.engine.localServerName}`)];
      const back = await eventually(async () => (await Promise.all(keys.map((k) => inspect.get(k).catch(() => undefined)))).every((v) => v !== undefined), 30_000, 100);
      expect(back).toBe(true);
      await pullAndVerify('pull-after-restart', [0, 15], [14, 15]);
    });
  });
}
