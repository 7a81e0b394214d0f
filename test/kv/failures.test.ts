// Failure semantics across processes: a producer killed mid-request, a dead producer, a transfer timeout,
// a consumer that never says "done". Failed transfers always come back as failed block ids.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import type { KvLayoutSpec, KvTransferParams } from '../../lib/kv';
import { BlockPool, KvGroup, type RankOutcome } from './group';

const parallel = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 2 } };
const sorted = (a: number[]) => [...a].sort((x, y) => x - y);

describe('pull failures', () => {
  const layout: KvLayoutSpec = { numLayers: 4, numBlocks: 256, blockSize: 16, headBytes: 128, numHeads: 1 };
  let meta: MetadataServer;
  let url: string;
  let prefill: KvGroup;
  let decode: KvGroup;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    const base = { metadataServer: url, ...parallel, layout, totalKvHeads: 2, options: { heartbeatMs: 200, staleAfterMs: 1000 } };
    [prefill, decode] = await Promise.all([KvGroup.spawn({ ...base, role: 'producer', engineId: 'p' }), KvGroup.spawn({ ...base, role: 'consumer', engineId: 'd' })]);
  });

  afterAll(async () => {
    prefill?.signal('SIGCONT');
    await prefill?.close();
    await decode?.close();
    await meta?.close();
  });

  it('reports a transfer timeout as failed blocks (producer stopped)', async () => {
    const params = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: 'slow', blockIds: [1, 2, 3] });
    prefill.signal('SIGSTOP');
    try {
      const results = await decode.call<RankOutcome[]>('pull', { dp: 0, params, blockIds: [10, 11, 12], timeoutMs: 1000 });
      for (const x of results) {
        expect(x.ok).toBe(false);
        expect(x.error).toBe('TIMEOUT');
        expect(sorted(x.failedBlockIds)).toEqual([10, 11, 12]);
        expect(x.stages).toEqual(['TIMEOUT']); // the failure ledger: no answer within the deadline
      }
    } finally {
      prefill.signal('SIGCONT');
    }
  });

  it('reports a producer killed mid-request as failed blocks, quickly, and a dead producer fails fast', async () => {
    const blocks = Array.from({ length: 200 }, (_, i) => i + 20);
    const params = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: 'victim', blockIds: blocks });
    const later = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: 'after', blockIds: [5, 6] });
    // Freeze the producer so the read is certainly in flight, then kill it.
    prefill.signal('SIGSTOP');
    const pulling = decode.call<RankOutcome[]>('pull', { dp: 0, params, blockIds: blocks, timeoutMs: 60_000 });
    await new Promise((r) => setTimeout(r, 500));
    const killedAt = performance.now();
    prefill.signal('SIGKILL');
    const results = await pulling;
    const afterKill = performance.now() - killedAt;
    for (const x of results) {
      expect(x.ok).toBe(false);
      expect(sorted(x.failedBlockIds)).toEqual(blocks);
      // Typically CONNECTION_LOST (or CONNECT_FAILED after the engine's retry); never a waited-out TIMEOUT.
      expect(x.error, JSON.stringify(x)).toBeDefined();
      expect(x.error, JSON.stringify(x)).not.toBe('TIMEOUT');
      expect(x.stages).toEqual(['RECV']); // the read itself failed
    }
    expect(afterKill).toBeLessThan(30_000); // the transfer timeout was 60 s: death is detected, not waited out
    await prefill.exited;

    // Its registry entry is still there (it could not remove it): the connection is refused at once.
    const t0 = performance.now();
    const again = await decode.call<RankOutcome[]>('pull', { dp: 0, params: later, blockIds: [7, 8], timeoutMs: 60_000 });
    for (const x of again) {
      expect(x.ok).toBe(false);
      expect(sorted(x.failedBlockIds)).toEqual([7, 8]);
    }
    expect(performance.now() - t0).toBeLessThan(30_000);
    // Once the heartbeat is stale, the registry itself declares the rank dead.
    await new Promise((r) => setTimeout(r, 1500));
    const stale = await decode.call<RankOutcome[]>('pull', { dp: 0, params: later, blockIds: [7, 8], timeoutMs: 60_000 });
    for (const x of stale) expect(x).toMatchObject({ ok: false, error: 'CONNECT_FAILED', failedBlockIds: [7, 8], stages: ['BOOTSTRAP'] });
  });
});

describe('push: producer killed mid-request', () => {
  const layout: KvLayoutSpec = { numLayers: 8, numBlocks: 1024, blockSize: 16, headBytes: 256, numHeads: 1 };
  let meta: MetadataServer;
  let prefill: KvGroup;
  let decode: KvGroup;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const url = (await meta.listen()).url;
    const base = { metadataServer: url, ...parallel, layout, totalKvHeads: 2 };
    [prefill, decode] = await Promise.all([
      // A deliberately slow producer engine (4 KiB slices, one in flight per connection), so every push is
      // still running when it is killed.
      KvGroup.spawn({ ...base, role: 'producer', engineId: 'p', options: { engineOptions: { sliceSize: 4096, maxInflightPerConnection: 1, connectionsPerPeer: 1 } } }),
      KvGroup.spawn({ ...base, role: 'consumer', engineId: 'd', options: { probeIntervalMs: 200 } }),
    ]);
  });

  afterAll(async () => {
    await prefill?.close();
    await decode?.close();
    await meta?.close();
  });

  it('fails the waiting decode requests fast with all their blocks, never as success', async () => {
    const pPool = new BlockPool(layout.numBlocks, 5);
    const dPool = new BlockPool(layout.numBlocks, 6);
    const reqs = Array.from({ length: 12 }, (_, i) => ({ id: `big-${i}`, p: pPool.take(64), d: dPool.take(64) }));
    const timeoutMs = 60_000;
    const params = await Promise.all(reqs.map((r) => decode.call<KvTransferParams>('expect', { dp: 0, requestId: r.id, blockIds: r.d, timeoutMs })));
    for (const r of reqs) await prefill.call('fill', { dp: 0, requestId: r.id, blockIds: r.p });
    const pushes = reqs.map((r, i) => prefill.call('push', { dp: 0, params: params[i], blockIds: r.p, fill: false }).catch(() => undefined));
    // Every decode rank has seen its producer start on every request: kill the producer mid-push.
    for (const r of reqs) for (const tp of [0, 1]) await decode.waitEvent((e) => e.event === 'pushStarted' && e.requestId === r.id && e.tp === tp);
    const killedAt = performance.now();
    prefill.signal('SIGKILL');
    await Promise.all(pushes);
    let failed = 0;
    for (const r of reqs) {
      const results = await decode.call<RankOutcome[]>('awaitPush', { dp: 0, requestId: r.id });
      for (const x of results) {
        if (x.ok) {
          expect(x.mismatches).toBe(0);
          expect(x.failedBlockIds).toEqual([]);
        } else {
          failed++;
          expect(sorted(x.failedBlockIds)).toEqual(sorted(r.d));
          expect(x.error).toBe('CONNECTION_LOST');
          expect(x.stages).toEqual(['RECV']); // the producer vanished while this rank waited
        }
      }
    }
    // The producer was probed: its death was noticed, not waited out (the timeout is 60 s).
    expect(performance.now() - killedAt).toBeLessThan(30_000);
    expect(failed).toBeGreaterThan(0);
  });
});

describe('consumer that never says done', () => {
  const layout: KvLayoutSpec = { numLayers: 2, numBlocks: 64, blockSize: 4, headBytes: 16, numHeads: 1 };
  let meta: MetadataServer;
  let prefill: KvGroup;
  let decode: KvGroup;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const url = (await meta.listen()).url;
    const base = { metadataServer: url, ...parallel, layout, totalKvHeads: 2 };
    [prefill, decode] = await Promise.all([KvGroup.spawn({ ...base, role: 'producer', engineId: 'p' }), KvGroup.spawn({ ...base, role: 'consumer', engineId: 'd' })]);
  });

  afterAll(async () => {
    await prefill?.close();
    await decode?.close();
    await meta?.close();
  });

  it('force-frees after the abort timeout; ranks that got "done" free at once; late "done" is counted', async () => {
    const abortTimeoutMs = 1500;
    const nobody = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: 'nobody', blockIds: [1, 2], abortTimeoutMs });
    const half = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: 'half', blockIds: [3, 4], abortTimeoutMs });
    // Only decode tp rank 0 pulls "half"; tp rank 1 never does.
    const r0 = await decode.call<RankOutcome[]>('pull', { dp: 0, params: half, blockIds: [9, 10], tpRanks: [0] });
    expect(r0[0]).toMatchObject({ ok: true, mismatches: 0 });
    const done0 = await prefill.waitEvent((e) => e.requestId === 'half' && e.tp === 0);
    expect(done0.reason).toBe('done');
    const forced = await Promise.all([
      prefill.waitEvent((e) => e.requestId === 'half' && e.tp === 1),
      prefill.waitEvent((e) => e.requestId === 'nobody' && e.tp === 0),
      prefill.waitEvent((e) => e.requestId === 'nobody' && e.tp === 1),
    ]);
    for (const ev of forced) {
      expect(ev.reason).toBe('abort-timeout');
      expect(ev.heldMs as number).toBeGreaterThanOrEqual(abortTimeoutMs - 5);
      expect(ev.blockIds).toEqual(ev.requestId === 'nobody' ? [1, 2] : [3, 4]);
    }
    for (const h of await prefill.call<{ held: string[] }[]>('held', { dp: 0 })) expect(h.held).toEqual([]);
    // A consumer that shows up after the force-free still gets an answer; the producer counts the late "done".
    await decode.call<RankOutcome[]>('pull', { dp: 0, params: nobody, blockIds: [11, 12] });
    const until = Date.now() + 10_000;
    let late = 0;
    while (Date.now() < until) {
      const m = await prefill.call<{ metrics: { holds: { lateDone: number; released: Record<string, number> } } }[]>('metrics');
      late = m.reduce((a, x) => a + x.metrics.holds.lateDone, 0);
      if (late === 2) {
        expect(m.reduce((a, x) => a + x.metrics.holds.released['abort-timeout'], 0)).toBe(3);
        // Each force-free left a TIMEOUT record in the producer's failure ledger.
        expect(m.reduce((a, x) => a + (x.metrics as unknown as { failures: { TIMEOUT: number } }).failures.TIMEOUT, 0)).toBe(3);
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(late).toBe(2);
  });
});
