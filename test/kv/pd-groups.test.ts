// A prefill group (dp 2 × tp 2) and a decode group (dp 2 × tp 2), each in its own process (4 rank engines
// per process: 2 cores cannot host 8 busy Node processes plus the runner honestly), over 127.0.0.1 with an
// embedded HTTP metadata server. Many concurrent requests; every byte checked at the destination against a
// pattern keyed by (layer, K/V, block position, head, token).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import type { KvLayoutSpec, KvTransferParams } from '../../lib/kv';
import { BlockPool, KvGroup, type RankOutcome } from './group';

const layout: KvLayoutSpec = { numLayers: 4, numBlocks: 1024, blockSize: 16, headBytes: 64, numHeads: 2 };
const totalKvHeads = 4;
const parallel = { prefill: { dpSize: 2, tpSize: 2 }, decode: { dpSize: 2, tpSize: 2 } };
const rowBytes = (blocks: number) => blocks * layout.numLayers * 2 * layout.blockSize * layout.numHeads! * layout.headBytes;
const REQUESTS = 48;

interface Req {
  id: string;
  pdp: number;
  ddp: number;
  pBlocks: number[];
  dBlocks: number[];
}

describe('prefill group dp2×tp2 → decode group dp2×tp2 (separate processes)', () => {
  let meta: MetadataServer;
  let prefill: KvGroup;
  let decode: KvGroup;
  const pPools = [new BlockPool(layout.numBlocks, 1), new BlockPool(layout.numBlocks, 2)];
  const dPools = [new BlockPool(layout.numBlocks, 3), new BlockPool(layout.numBlocks, 4)];

  function requests(tag: string): Req[] {
    return Array.from({ length: REQUESTS }, (_, i) => {
      const n = 1 + ((i * 7) % 12);
      const pdp = i % 2;
      const ddp = (i >> 1) % 2;
      const pBlocks = pPools[pdp].take(n);
      // Every 5th request: the decode already has a prefix cached and takes only the tail.
      const dBlocks = dPools[ddp].take(i % 5 === 4 && n > 1 ? n - 1 : n);
      return { id: `${tag}-${i}`, pdp, ddp, pBlocks, dBlocks };
    });
  }

  function giveBack(reqs: Req[]): void {
    for (const r of reqs) {
      pPools[r.pdp].give(r.pBlocks);
      dPools[r.ddp].give(r.dBlocks);
    }
  }

  function expectVerified(results: RankOutcome[], r: Req): void {
    expect(results).toHaveLength(2);
    for (const x of results) {
      expect(x, `${r.id} tp${x.tp}: ${x.error ?? ''}`).toMatchObject({ ok: true, failedBlockIds: [], mismatches: 0 });
      expect(x.checkedBytes).toBe(rowBytes(r.dBlocks.length));
    }
  }

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const url = (await meta.listen()).url;
    const base = { metadataServer: url, ...parallel, layout, totalKvHeads };
    [prefill, decode] = await Promise.all([
      KvGroup.spawn({ ...base, role: 'producer', engineId: 'prefill-0' }),
      KvGroup.spawn({ ...base, role: 'consumer', engineId: 'decode-0' }),
    ]);
  });

  afterAll(async () => {
    await prefill?.close();
    await decode?.close();
    await meta?.close();
  });

  it('publishes every rank under mooncake/kv/<engine_id>/<dp>/<tp>', () => {
    const keys = [...meta.entries().keys()].filter((k) => k.startsWith('mooncake/kv/')).sort();
    const want: string[] = [];
    for (const e of ['decode-0', 'prefill-0']) for (const dp of [0, 1]) for (const tp of [0, 1]) want.push(`mooncake/kv/${e}/${dp}/${tp}`);
    expect(keys).toEqual(want);
    const entry = JSON.parse(meta.entries().get('mooncake/kv/prefill-0/1/0')!) as Record<string, unknown>;
    expect(entry).toMatchObject({ role: 'kv_producer', dp_rank: 1, tp_rank: 0, dp_size: 2, tp_size: 2, total_kv_heads: 4, host: '127.0.0.1' });
    expect((entry.tensors as string[]).length).toBe(8);
  });

  it(`pull: ${REQUESTS} concurrent requests across dp ranks, verified on every decode rank, then freed on "done"`, async () => {
    const reqs = requests('pull');
    await Promise.all(
      reqs.map(async (r) => {
        const params = await prefill.call<KvTransferParams>('hold', { dp: r.pdp, requestId: r.id, blockIds: r.pBlocks });
        expect(params).toMatchObject({ remote_engine_id: 'prefill-0', remote_dp_rank: r.pdp, remote_block_ids: r.pBlocks, remote_request_id: r.id, do_remote_prefill: true });
        // The proxy passes the params through JSON.
        const results = await decode.call<RankOutcome[]>('pull', { dp: r.ddp, params: JSON.parse(JSON.stringify(params)) as unknown, blockIds: r.dBlocks });
        expectVerified(results, r);
        for (const tp of [0, 1]) {
          const ev = await prefill.waitEvent((e) => e.event === 'released' && e.requestId === r.id && e.tp === tp);
          expect(ev.reason).toBe('done');
          expect(ev.dp).toBe(r.pdp);
        }
      }),
    );
    for (const dp of [0, 1]) {
      for (const h of await prefill.call<{ tp: number; held: string[] }[]>('held', { dp })) expect(h.held).toEqual([]);
    }
    const metrics = await decode.call<{ metrics: { transfers: { succeeded: number; failed: number }; bytes: number } }[]>('metrics');
    expect(metrics.reduce((a, m) => a + m.metrics.transfers.succeeded, 0)).toBe(2 * REQUESTS);
    expect(metrics.reduce((a, m) => a + m.metrics.transfers.failed, 0)).toBe(0);
    expect(metrics.reduce((a, m) => a + m.metrics.bytes, 0)).toBe(reqs.reduce((a, r) => a + 2 * rowBytes(r.dBlocks.length), 0));
    giveBack(reqs);
  });

  it(`push: ${REQUESTS} concurrent requests written into the blocks decode assigned, then notified`, async () => {
    const reqs = requests('push');
    await Promise.all(
      reqs.map(async (r) => {
        const params = await decode.call<KvTransferParams>('expect', { dp: r.ddp, requestId: r.id, blockIds: r.dBlocks, timeoutMs: 30_000 });
        expect(params).toMatchObject({ remote_engine_id: 'decode-0', remote_dp_rank: r.ddp, remote_block_ids: r.dBlocks });
        const pushed = await prefill.call<RankOutcome[]>('push', { dp: r.pdp, params, blockIds: r.pBlocks });
        for (const o of pushed) expect(o, o.error).toMatchObject({ ok: true, failedBlockIds: [] });
        const results = await decode.call<RankOutcome[]>('awaitPush', { dp: r.ddp, requestId: r.id, firstPosition: r.pBlocks.length - r.dBlocks.length });
        expectVerified(results, r);
      }),
    );
    giveBack(reqs);
  });

  it('closing removes every registry entry', async () => {
    await prefill.close();
    await decode.close();
    expect([...meta.entries().keys()].filter((k) => k.startsWith('mooncake/kv/'))).toEqual([]);
  });
});
