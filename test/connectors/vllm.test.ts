/**
 * vLLM's own MooncakeConnector (the released wheel's module, see scripts/setup-connectors.sh) paired with
 * mooncake-node's 'vllm' side channel, with the real upstream engine from the PyPI wheel as vLLM's data plane
 * and the Node proxy in front in 'push' mode:
 *
 * - real vLLM prefill TP 2 -> Node decode TP 1 (GQA, 4 heads): vLLM's own bootstrap server and sender
 *   thread; each prefill rank writes its two heads at its offset in the decode's pages;
 * - Node prefill TP 1 -> real vLLM decode TP 2: vLLM's own decode scheduler and receiver (bootstrap query,
 *   DEALER request, its finished/failed bookkeeping); the Node prefill splits its heads over both ranks, and
 *   a prefix hit on the decode takes the prefill's last blocks;
 * - a prefill killed while a decode waits for it, a decode gone before the prefill writes: both settle long
 *   before their timeouts, with a failure-ledger record saying where.
 *
 * Bytes are compared at the destination per layer, block and head.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createProxy, KvConsumer, KvProducer, type KvTransferOutcome, type PdProxy } from '../../lib';
import { eventually, freePortRange } from './helpers';
import { stopAllVllmPeers, VllmPeer, vllmOrSkip, type VllmSetup } from './peers/vllm-peer';
import { nodeDecodeFront, nodePrefillFront, vllmDecodeFront, vllmPrefillFront, type Front } from './vllm-servers';

const setup = vllmOrSkip('test/connectors/vllm.test.ts');

const LAYERS = 2;
const BLOCKS = 8;
const BLOCK_SIZE = 4;
const CONTENT = 32; // bytes of one head and token: K then V
const HEADS = 4;
const PIECE = BLOCK_SIZE * CONTENT; // one head of one block (LBHNC: heads outermost in a page)

function nodeLayout(heads: number) {
  return { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: CONTENT, numHeads: heads, headLayout: 'HND' as const, combinedKv: true };
}

async function vllmRanks(s: VllmSetup, role: 'kv_producer' | 'kv_consumer', engineId: string, tp: number, bootstrapPort: number, env: Record<string, string> = {}): Promise<VllmPeer[]> {
  const ranks: VllmPeer[] = [];
  for (let r = 0; r < tp; r++) {
    const peer = await VllmPeer.create(s, env);
    ranks.push(peer);
    await peer.allocKv(LAYERS, BLOCKS, HEADS / tp, BLOCK_SIZE, CONTENT, role === 'kv_producer');
    await peer.start({ role, engineId, tpRank: r, tpSize: tp, totalHeads: HEADS, blockSize: BLOCK_SIZE, bootstrapPort });
  }
  return ranks;
}

async function proxyFor(prefill: Front, decode: Front, bootstrapPort: number): Promise<PdProxy> {
  const proxy = createProxy({ mode: 'push', prefill: [prefill.url], decode: [decode.url], bootstrapPorts: { [prefill.url]: bootstrapPort }, healthCheck: { enabled: false }, retries: { maxRetries: 0 } });
  await proxy.listen();
  return proxy;
}

async function complete(proxy: PdProxy, requestId: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${proxy.address()!.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': requestId },
    body: JSON.stringify({ model: 'm', prompt: 'the quick brown fox', max_tokens: 4 }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe.skipIf(!setup)(`vLLM ${setup?.version ?? ''} MooncakeConnector <-> mooncake-node, through the push-mode proxy`, () => {
  const closers: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
    await stopAllVllmPeers();
  });

  it('real vLLM prefill TP 2 -> Node decode TP 1 (4 KV heads): each prefill rank writes its heads; the proxy contract holds', async () => {
    const bootstrapPort = await freePortRange(1);
    const ranks = await vllmRanks(setup!, 'kv_producer', 'vllm-prefill', 2, bootstrapPort);
    expect(ranks[0].bootstrap).toBe(`http://127.0.0.1:${bootstrapPort}`);
    const c = await KvConsumer.create({ sideChannel: 'vllm', engineId: 'node-decode', host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 }, layout: nodeLayout(HEADS), totalKvHeads: HEADS });
    closers.push(() => c.close());
    const pBlocks = [1, 2, 5];
    const dBlocks = [6, 0, 3];
    const outcomes: KvTransferOutcome[] = [];
    const pf = await vllmPrefillFront(ranks, () => pBlocks, 300);
    const df = await nodeDecodeFront([c], () => dBlocks, outcomes);
    closers.push(pf.close, df.close);
    const proxy = await proxyFor(pf, df, bootstrapPort);
    closers.push(() => proxy.close());

    const { status, body } = await complete(proxy, 'req-p2d1');
    expect(status, JSON.stringify(body)).toBe(200);
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0].ok, outcomes[0].error?.message).toBe(true);
    expect(outcomes[0]).toMatchObject({ mode: 'pull', direction: 'receive', failedBlockIds: [], failures: [] });
    expect(outcomes[0].peers.map((p) => p.tpRank).sort()).toEqual([0, 1]);

    // The proxy: one transfer id to both, both called at once, decode told where prefill's bootstrap server is.
    const transferId = 'xfer-req-p2d1';
    expect(pf.received[0].body).toMatchObject({ max_tokens: 1, stream: false, kv_transfer_params: { do_remote_decode: true, do_remote_prefill: false, transfer_id: transferId } });
    expect(pf.received[0].headers['x-data-parallel-rank']).toBe('0');
    expect(df.received[0].body.kv_transfer_params).toEqual({
      do_remote_decode: false, do_remote_prefill: true, remote_bootstrap_addr: `http://127.0.0.1:${bootstrapPort}`, remote_engine_id: 'vllm-prefill', transfer_id: transferId,
    });
    expect(df.received[0].body.max_tokens).toBe(4);
    expect(df.received[0].at).toBeLessThan(pf.received[0].answeredAt!);

    // Bytes: decode page = [rank 0's 2 heads][rank 1's 2 heads] for every layer and block pair.
    for (const [r, peer] of ranks.entries()) {
      const src = await peer.readBlocks(pBlocks);
      for (let l = 0; l < LAYERS; l++) {
        pBlocks.forEach((pb, j) => {
          const got = c.caches.blockView(l, 'kv', dBlocks[j])!.subarray(r * 2 * PIECE, (r + 1) * 2 * PIECE);
          expect(got.equals(src.get(`${l}/${pb}`)!), `prefill rank ${r} layer ${l} block ${pb}->${dBlocks[j]}`).toBe(true);
        });
      }
    }
    // vLLM's prefill freed its blocks once the decode had them (its own bookkeeping).
    for (const peer of ranks) expect(await peer.call({ cmd: 'wait', request_id: 'req-p2d1', kind: 'send', timeout: 10 })).toMatchObject({ done: true });
  }, 120_000);

  it('Node prefill TP 1 -> real vLLM decode TP 2: the prefill splits its heads over both decode ranks; a prefix hit takes its last blocks', async () => {
    const bootstrapPort = await freePortRange(1);
    const p = await KvProducer.create({ sideChannel: 'vllm', engineId: 'node-prefill', host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 2 }, layout: nodeLayout(HEADS), totalKvHeads: HEADS, vllm: { bootstrapPort } });
    closers.push(() => p.close());
    for (let l = 0; l < LAYERS; l++) {
      const v = p.caches.tensorView(l)!;
      for (let i = 0; i < v.length; i++) v[i] = (i * 13 + l * 71) & 0xff;
    }
    const ranks = await vllmRanks(setup!, 'kv_consumer', 'vllm-decode', 2, await freePortRange(1));
    const pBlocks = [3, 4, 7];
    const dBlocks = [[2, 5, 6], [1, 0]]; // the second request: the decode's prefix cache holds the first block
    const outcomes: KvTransferOutcome[] = [];
    const pf = await nodePrefillFront([p], () => pBlocks, outcomes);
    const df = await vllmDecodeFront(ranks, (n) => dBlocks[n], BLOCK_SIZE);
    closers.push(pf.close, df.close);
    const proxy = await proxyFor(pf, df, bootstrapPort);
    closers.push(() => proxy.close());

    for (const [n, rid] of ['req-p1d2', 'req-p1d2-hit'].entries()) {
      const { status, body } = await complete(proxy, rid);
      expect(status, JSON.stringify(body)).toBe(200);
      expect(body.kv).toMatchObject({ done: true, invalid_block_ids: [] });
      expect(outcomes[n].ok, outcomes[n].error?.message).toBe(true);
      expect(outcomes[n].peers.map((x) => x.tpRank).sort()).toEqual([0, 1]);
      const pairs = dBlocks[n].map((db, j) => [pBlocks[pBlocks.length - dBlocks[n].length + j], db]);
      for (const [d, peer] of ranks.entries()) {
        const got = await peer.readBlocks(dBlocks[n]);
        for (let l = 0; l < LAYERS; l++) {
          for (const [pb, db] of pairs) {
            const want = p.caches.blockView(l, 'kv', pb)!.subarray(d * 2 * PIECE, (d + 1) * 2 * PIECE);
            expect(got.get(`${l}/${db}`)!.equals(want), `request ${rid} decode rank ${d} layer ${l} block ${pb}->${db}`).toBe(true);
          }
        }
      }
    }
    expect(p.metrics().failures).toEqual({ BOOTSTRAP: 0, REGISTRATION: 0, SEND: 0, RECV: 0, NOTIFY: 0, TIMEOUT: 0, ABORT: 0 });
  }, 120_000);

  it('a vLLM prefill killed while the decode waits for its write: the Node decode settles at once with a RECV record, in its answer too', async () => {
    const bootstrapPort = await freePortRange(1);
    const [prefill] = await vllmRanks(setup!, 'kv_producer', 'vllm-prefill', 1, bootstrapPort);
    const c = await KvConsumer.create({ sideChannel: 'vllm', engineId: 'node-decode', host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 }, layout: nodeLayout(HEADS), totalKvHeads: HEADS, transferTimeoutMs: 30_000 });
    closers.push(() => c.close());
    const outcomes: KvTransferOutcome[] = [];
    const pf = await vllmPrefillFront([prefill], () => [1, 2], 3000);
    const df = await nodeDecodeFront([c], () => [4, 5], outcomes);
    closers.push(pf.close, df.close);
    const proxy = await proxyFor(pf, df, bootstrapPort);
    closers.push(() => proxy.close());
    const answer = complete(proxy, 'req-killed');
    // Once the decode's transfer request reached the prefill (it waits for the prefill to finish), kill it.
    await eventually(() => pf.received.length === 1 && df.received.length === 1, 10_000, 'both requests to arrive');
    await new Promise((r) => setTimeout(r, 300));
    const t0 = performance.now();
    prefill.kill();
    const { status, body } = await answer;
    expect(performance.now() - t0).toBeLessThan(10_000);
    // The decode's serving stack sees the failure and says so (here: in its answer; it could recompute).
    expect(status).toBe(200);
    expect(body.kv).toMatchObject({ ranks: [{ ok: false, failed_block_ids: [4, 5], failures: [{ stage: 'RECV', code: 'CONNECTION_LOST', advice: 'reroute' }] }] });
    expect(outcomes).toHaveLength(1);
    const o = outcomes[0];
    expect(o.ok).toBe(false);
    expect(o.failedBlockIds).toEqual([4, 5]);
    expect(o.failures).toEqual([expect.objectContaining({ stage: 'RECV', code: 'CONNECTION_LOST', advice: 'reroute', side: 'decode', sideChannel: 'vllm', blockIds: [4, 5], peer: { engineId: 'vllm-prefill', dpRank: 0, tpRank: 0 } })]);
    expect(c.metrics().failures.RECV).toBe(1);
  }, 120_000);

  it('a vLLM decode gone before the Node prefill writes: the push settles at once with a SEND record (and the lost answer a NOTIFY)', async () => {
    const bootstrapPort = await freePortRange(1);
    const p = await KvProducer.create({ sideChannel: 'vllm', engineId: 'node-prefill', host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 }, layout: nodeLayout(HEADS), totalKvHeads: HEADS, vllm: { bootstrapPort }, transferTimeoutMs: 20_000 });
    closers.push(() => p.close());
    const stages: string[] = [];
    p.on('failure', (r) => stages.push(r.stage));
    const [decode] = await vllmRanks(setup!, 'kv_consumer', 'vllm-decode', 1, await freePortRange(1));
    const params = p.transferParams('xfer-gone', []);
    await decode.call({ cmd: 'decode_begin', request_id: 'd-gone', params, block_ids: [1, 2], prompt_tokens: 8 });
    await eventually(() => p.metrics().notifies.received === 1, 10_000, "the decode's transfer request");
    decode.kill();
    await decode.exit;
    const t0 = performance.now();
    const o = await p.push({ transfer_id: 'xfer-gone' }, [3, 4]);
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(o.ok).toBe(false);
    expect(o.failedBlockIds).toEqual([3, 4]);
    expect(o.failures).toEqual([expect.objectContaining({ stage: 'SEND', side: 'prefill', sideChannel: 'vllm', blockIds: [3, 4], peer: { engineId: expect.stringMatching(/^vllm@127\.0\.0\.1:/), dpRank: 0, tpRank: 0 } })]);
    expect(o.failures[0].advice).toBe('reroute');
    // The answer to the dead decode is lost too: a NOTIFY record when the ROUTER already saw it go.
    expect(stages.filter((x) => x !== 'NOTIFY')).toEqual(['SEND']);
  }, 120_000);
});
