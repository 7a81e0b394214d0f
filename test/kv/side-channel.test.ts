/**
 * The side-channel seam without Python: Node <-> Node over the vllm-ascend side channel (MLA 4 -> 2, where
 * vllm-ascend's RNG decides which prefill ranks are read and the others release at once), explicit
 * selection from --kv-transfer-config, mixing side channels (a clear INVALID_CONFIG, never a hang), and the
 * handshake-port clash vllm-ascend's layout implies.
 */
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import { KvConsumer, KvProducer, kvOptionsFromConfig, parseKvTransferConfig, targetsForPrefillRank, type KvRelease } from '../../lib/kv';
import { freePortRange } from '../helpers/ports';

const layout = { attention: 'mla' as const, numLayers: 2, numBlocks: 16, blockSize: 4, headBytes: 64 };
const parallel = { prefill: { dpSize: 1, tpSize: 4 }, decode: { dpSize: 1, tpSize: 2 } };

describe('Node <-> Node on the vllm-ascend side channel (MLA, prefill TP 4 -> decode TP 2)', () => {
  const producers: KvProducer[] = [];
  const consumers: KvConsumer[] = [];
  let kvPort: number;

  beforeAll(async () => {
    kvPort = await freePortRange(4);
    const common = { sideChannel: 'vllm-ascend' as const, kvPort, host: '127.0.0.1', ...parallel, layout };
    for (let r = 0; r < 4; r++) {
      const p = await KvProducer.create({ ...common, engineId: 'p', tpRank: r });
      for (let t = 0; t < p.layout.tensorCount; t++) p.caches.tensorView(t)!.fill(0x10 * (r + 1) + t);
      producers.push(p);
    }
    const dPort = await freePortRange(2);
    for (let r = 0; r < 2; r++) consumers.push(await KvConsumer.create({ ...common, kvPort: dPort, engineId: 'd', tpRank: r }));
  });

  afterAll(async () => {
    await Promise.all([...producers, ...consumers].map((x) => x.close()));
  });

  it('each decode rank reads the prefill rank vllm-ascend picks; unpicked ranks release at once, picked ones on DONE', async () => {
    for (const rid of ['cmpl-1', 'cmpl-2', 'cmpl-3']) {
      const holds = producers.map((p) => p.hold(rid, [3, 4, 5]));
      const picked = producers.map((_p, r) => targetsForPrefillRank(rid, { attention: 'mla', totalHeads: 1, prefillTp: 4, decodeTp: 2, selection: 'vllm-ascend' }, r).length > 0);
      expect(picked.filter(Boolean)).toHaveLength(2);
      const outcomes = await Promise.all(consumers.map((c) => c.pull(holds[0].params, [7, 8, 9])));
      for (const [d, o] of outcomes.entries()) {
        expect(o.ok, o.error?.message).toBe(true);
        const src = o.peers[0].tpRank;
        expect(picked[src]).toBe(true);
        for (let l = 0; l < 2; l++) expect(consumers[d].caches.blockView(l, 'latent', 8)!.every((b) => b === 0x10 * (src + 1) + l)).toBe(true);
      }
      const released: KvRelease[] = await Promise.all(holds.map((h) => h.released));
      expect(released.map((r) => r.reason)).toEqual(picked.map((x) => (x ? 'done' : 'not-selected')));
    }
  });

  it('the params a Node prefill emits are what vllm-ascend 0.23 emits (per-group block ids, no mooncake-node keys)', () => {
    const h = producers[0].hold('cmpl-shape', [1, 2], { promptTokens: 7, lastTokenId: 3 });
    expect(h.params).toEqual({
      do_remote_prefill: true, do_remote_decode: false, remote_block_ids: [[1, 2]], remote_engine_id: 'p', remote_request_id: 'cmpl-shape',
      remote_host: '127.0.0.1', remote_port: kvPort, remote_pcp_size: 1, remote_dcp_size: 1, remote_ptp_size: 4, last_token_id: 3,
      remote_multi_nodes_meta_mapping: {}, num_prompt_blocks: 2, remote_block_size: 4,
    });
    producers[0].release('cmpl-shape');
  });
});

describe('Node <-> Node layerwise push on the vllm-ascend side channel (TP 2 -> TP 2, GQA)', () => {
  const layoutG = { numLayers: 3, numBlocks: 16, blockSize: 4, headBytes: 16, numHeads: 2 };
  const tp2 = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 2 } };

  it('each prefill rank writes its decode rank, DONE_SENDING completes the expectation; a failed push fails it', async () => {
    const pPort = await freePortRange(2);
    const dPort = await freePortRange(2);
    const common = { sideChannel: 'vllm-ascend' as const, host: '127.0.0.1', ...tp2, layout: layoutG, totalKvHeads: 4 };
    const ps = [0, 1].map((r) => KvProducer.create({ ...common, engineId: 'lp', kvPort: pPort, tpRank: r }));
    const ds = [0, 1].map((r) => KvConsumer.create({ ...common, engineId: 'ld', kvPort: dPort, tpRank: r }));
    const producers = await Promise.all(ps);
    const consumers = await Promise.all(ds);
    try {
      producers.forEach((p, r) => {
        for (let t = 0; t < p.layout.tensorCount; t++) p.caches.tensorView(t)!.fill(0x20 + 8 * r + t);
      });
      const xs = consumers.map((c) => c.expect('req-lw', [9, 10], { timeoutMs: 5000 }));
      expect(xs[0].params).toMatchObject({ request_id: 'req-lw', do_remote_decode: true, remote_block_ids: [[9, 10]], remote_port: dPort, remote_tp_size: 2, remote_block_size: [4] });
      const pushed = await Promise.all(producers.map((p) => p.push(xs[0].params, [1, 2])));
      for (const o of pushed) expect(o.ok, o.error?.message).toBe(true);
      const outcomes = await Promise.all(xs.map((x) => x.done));
      outcomes.forEach((o, r) => {
        expect(o.ok, o.error?.message).toBe(true);
        for (let l = 0; l < 3; l++) expect(consumers[r].caches.blockView(l, 'v', 10)!.every((b) => b === 0x20 + 8 * r + 2 * l + 1)).toBe(true);
      });
      // The push fails on the prefill (a block the decode does not have): FAILED_SENDING, and every block
      // of the decode's expectation is reported failed.
      const x = consumers[0].expect('req-fail', [3], { timeoutMs: 5000 });
      const failedPush = await producers[0].push({ ...x.params, remote_block_ids: [[20]] }, [15]);
      expect(failedPush.ok).toBe(false);
      const failedOutcome = await x.done;
      expect(failedOutcome.ok).toBe(false);
      expect(failedOutcome.failedBlockIds).toEqual([3]);
      const unequal = await KvProducer.create({ ...common, prefill: { dpSize: 1, tpSize: 4 }, layout: { ...layoutG, numHeads: 1 }, engineId: 'lq', kvPort: await freePortRange(4), tpRank: 0 });
      const y = consumers[1].expect('req-unequal', [4], { timeoutMs: 5000 });
      const o = await unequal.push(y.params, [1]);
      expect(o.ok).toBe(false);
      expect(o.error).toMatchObject({ code: 'INVALID_CONFIG' });
      await unequal.close();
      y.cancel();
      // A decode of unequal TP refuses to expect a layerwise push, and keeps nothing pending.
      const narrow = await KvConsumer.create({ ...common, prefill: { dpSize: 1, tpSize: 4 }, engineId: 'lr', kvPort: await freePortRange(2), tpRank: 0 });
      expect(() => narrow.expect('req-narrow', [1])).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
      expect(narrow.metrics().expectations?.active).toBe(0);
      await narrow.close();
    } finally {
      await Promise.all([...producers, ...consumers].map((c) => c.close()));
    }
  });
});

describe('choosing the side channel', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(() => meta.close());

  it('--kv-transfer-config selects it explicitly (kv_connector_extra_config.side_channel / vllm_ascend_profile)', () => {
    const base = { kv_connector: 'MooncakeConnectorV1', kv_role: 'kv_consumer', kv_port: '20002', engine_id: '1', kv_connector_extra_config: { prefill: { dp_size: 1, tp_size: 2 }, decode: { dp_size: 1, tp_size: 2 } } };
    expect(parseKvTransferConfig(base)).toMatchObject({ sideChannel: 'mooncake-node', vllmAscendProfile: '0.23' });
    const cfg = parseKvTransferConfig({ ...base, kv_connector_extra_config: { ...base.kv_connector_extra_config, side_channel: 'vllm-ascend', vllm_ascend_profile: '0.18' } });
    expect(cfg).toMatchObject({ sideChannel: 'vllm-ascend', vllmAscendProfile: '0.18', kvPort: 20002 });
    const o = kvOptionsFromConfig(cfg, undefined, { dpRank: 0, tpRank: 1, layout });
    expect(o).toMatchObject({ sideChannel: 'vllm-ascend', vllmAscend: { profile: '0.18' }, kvPort: 20002, tpRank: 1 });
    expect(o.metadataServer).toBeUndefined();
    const bad = (extra: object, top: object = {}) => () => parseKvTransferConfig({ ...base, ...top, kv_connector_extra_config: { ...base.kv_connector_extra_config, ...extra } });
    expect(bad({ side_channel: 'nixl' })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', details: expect.objectContaining({ field: 'kv_connector_extra_config.side_channel' }) }));
    expect(bad({ side_channel: 'vllm-ascend', vllm_ascend_profile: '0.20' })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(bad({ side_channel: 'vllm-ascend' }, { kv_port: undefined })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', details: expect.objectContaining({ field: 'kv_port' }) }));
    expect(bad({ side_channel: 'vllm-ascend' }, { kv_connector: 'MooncakeLayerwiseConnector' })()).toMatchObject({ mode: 'push', sideChannel: 'vllm-ascend' });
  });

  it('params of the other side channel are a clear INVALID_CONFIG at once, and nothing is sent', async () => {
    const kvPort = await freePortRange(1);
    const ascend = await KvProducer.create({ engineId: 'pa', sideChannel: 'vllm-ascend', kvPort, host: '127.0.0.1', ...parallel, tpRank: 0, layout });
    const node = await KvProducer.create({ engineId: 'pn', metadataServer: url, ...parallel, tpRank: 0, layout, engineOptions: { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } });
    const nodeConsumer = await KvConsumer.create({ engineId: 'dn', metadataServer: url, ...parallel, layout, engineOptions: { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } });
    const ascendConsumer = await KvConsumer.create({ engineId: 'da', sideChannel: 'vllm-ascend', kvPort: await freePortRange(2), host: '127.0.0.1', ...parallel, layout });
    try {
      const t0 = performance.now();
      const a = await nodeConsumer.pull(ascend.hold('r1', [1]).params, [1]);
      expect(a.ok).toBe(false);
      expect(a.error).toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'sideChannel' } });
      expect(a.error?.message).toMatch(/vllm-ascend/);
      const b = await ascendConsumer.pull(node.hold('r2', [1]).params, [1]);
      expect(b.ok).toBe(false);
      expect(b.error).toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'sideChannel' } });
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(nodeConsumer.metrics().notifies.sent + nodeConsumer.metrics().notifies.sendFailed).toBe(0);
      expect(ascendConsumer.metrics().notifies.sent + ascendConsumer.metrics().notifies.sendFailed).toBe(0);
      expect(ascend.sideChannel).toBe('vllm-ascend');
      expect(node.sideChannel).toBe('mooncake-node');
    } finally {
      await Promise.all([ascend, node, nodeConsumer, ascendConsumer].map((x) => x.close()));
    }
  });

  it("a taken handshake port (kv_port + dp × tp + tp) is a clear CONNECT_FAILED, and the engine port never takes it", async () => {
    const kvPort = await freePortRange(1);
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(kvPort, '127.0.0.1', () => r()));
    try {
      await expect(KvProducer.create({ engineId: 'px', sideChannel: 'vllm-ascend', kvPort, host: '127.0.0.1', ...parallel, tpRank: 0, layout })).rejects.toMatchObject({
        code: 'CONNECT_FAILED',
        details: expect.objectContaining({ port: kvPort }),
      });
    } finally {
      await new Promise((r) => squatter.close(r));
    }
    const p = await KvProducer.create({ engineId: 'py', sideChannel: 'vllm-ascend', kvPort, host: '127.0.0.1', ...parallel, tpRank: 0, layout });
    expect(p.engine.rpcPort).not.toBe(kvPort);
    expect(p.registryKey).toBe(`127.0.0.1:${kvPort}`);
    await p.close();
    await expect(KvProducer.create({ engineId: 'pz', sideChannel: 'vllm-ascend', host: '127.0.0.1', ...parallel, layout })).rejects.toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'kvPort' } });
  });
});
