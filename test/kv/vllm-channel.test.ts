/**
 * The 'vllm' side channel (vLLM's own MooncakeConnector) Node <-> Node: the bootstrap server, the decode's
 * transfer request, the prefill writing on it, heterogeneous TP both ways with vLLM's head resharding, and the
 * failure ledger when one side never shows up. The suites in test/connectors pair the same code with the
 * released vLLM connector.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvConsumer, KvProducer, type KvFailureRecord, type KvTransferOutcome } from '../../lib';
import { BootstrapServer, type KvRefusal } from '../../lib/kv';
import { ownRegions } from '../../lib/kv/vllm/regions';
import { encodeXferMetadata, parseXferResponse, XFER_STATUS, type XferMetadata, type XferResponse } from '../../lib/kv/vllm/wire';
import { dealerExchange } from '../../lib/kv/zmq/stream';
import { freePortRange } from '../helpers/ports';

const BLOCK_SIZE = 4;
const HEAD_BYTES = 32; // K and V of one head and token
const LAYERS = 2;

function layout(heads: number) {
  return { numLayers: LAYERS, numBlocks: 8, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: heads, headLayout: 'HND' as const, combinedKv: true };
}

/** The bytes of global head `g` of `block` on a rank holding heads [first, first + n) (HND: one piece per head). */
function headBytes(buf: Buffer, g: number, first: number): Buffer {
  const piece = BLOCK_SIZE * HEAD_BYTES;
  return buf.subarray((g - first) * piece, (g - first + 1) * piece);
}

interface Pair {
  producers: KvProducer[];
  consumers: KvConsumer[];
}

const live: (KvProducer | KvConsumer)[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((x) => x.close()));
});

async function pair(prefillTp: number, decodeTp: number, heads: number, extra: { abortTimeoutMs?: number; transferTimeoutMs?: number } = {}): Promise<Pair> {
  const bootstrapPort = await freePortRange(1);
  const common = { sideChannel: 'vllm' as const, host: '127.0.0.1', prefill: { dpSize: 1, tpSize: prefillTp }, decode: { dpSize: 1, tpSize: decodeTp }, totalKvHeads: heads, vllm: { bootstrapPort }, ...extra };
  const producers: KvProducer[] = [];
  // Rank 0 serves the bootstrap server; the others register with it.
  for (let r = 0; r < prefillTp; r++) {
    const p = await KvProducer.create({ ...common, engineId: 'vp', tpRank: r, layout: layout(Math.max(1, heads / prefillTp)) });
    live.push(p);
    for (let t = 0; t < p.layout.tensorCount; t++) {
      const v = p.caches.tensorView(t)!;
      for (let i = 0; i < v.length; i++) v[i] = (i * 7 + t * 31 + r * 101) & 0xff;
    }
    producers.push(p);
  }
  const consumers: KvConsumer[] = [];
  for (let r = 0; r < decodeTp; r++) {
    const c = await KvConsumer.create({ ...common, engineId: 'vd', tpRank: r, layout: layout(Math.max(1, heads / decodeTp)) });
    live.push(c);
    consumers.push(c);
  }
  return { producers, consumers };
}

/** Every head of every layer and block pair arrived from the prefill rank that held it. */
function expectHeads(p: Pair, heads: number, pairs: [number, number][]): number {
  const pTp = p.producers.length;
  const dTp = p.consumers.length;
  let n = 0;
  for (const [d, c] of p.consumers.entries()) {
    const dHeads = Math.max(1, heads / dTp);
    const dFirst = dTp <= heads ? d * dHeads : Math.floor(d / (dTp / heads));
    for (let g = dFirst; g < dFirst + dHeads; g++) {
      const src = pTp <= heads ? Math.floor(g / (heads / pTp)) : g * (pTp / heads);
      const pFirst = pTp <= heads ? src * (heads / pTp) : g;
      for (let l = 0; l < LAYERS; l++) {
        for (const [pb, db] of pairs) {
          const want = headBytes(p.producers[src].caches.blockView(l, 'kv', pb)!, g, pFirst);
          const got = headBytes(c.caches.blockView(l, 'kv', db)!, g, dFirst);
          expect(got.equals(want), `decode ${d} head ${g} layer ${l} block ${pb}->${db}`).toBe(true);
          n++;
        }
      }
    }
  }
  return n;
}

async function transfer(p: Pair, tid: string, pBlocks: number[], dBlocks: number[]): Promise<{ pushes: KvTransferOutcome[]; pulls: KvTransferOutcome[] }> {
  const params = p.producers[0].transferParams(tid, []);
  const pulls = Promise.all(p.consumers.map((c) => c.pull(params, dBlocks)));
  const pushes = Promise.all(p.producers.map((x) => x.push({ do_remote_decode: true, do_remote_prefill: false, transfer_id: tid }, pBlocks)));
  return { pushes: await pushes, pulls: await pulls };
}

describe("Node <-> Node on the 'vllm' side channel", () => {
  for (const [pTp, dTp, heads] of [[1, 1, 2], [2, 1, 4], [1, 2, 4], [4, 2, 2]] as const) {
    it(`prefill TP ${pTp} -> decode TP ${dTp}, ${heads} KV heads: every head lands where vLLM puts it`, async () => {
      const p = await pair(pTp, dTp, heads);
      const { pushes, pulls } = await transfer(p, `xfer-${pTp}-${dTp}`, [1, 2, 5], [6, 0, 3]);
      for (const o of [...pushes, ...pulls]) expect(o.ok, o.error?.message).toBe(true);
      for (const o of pulls) expect(o).toMatchObject({ mode: 'pull', direction: 'receive', failures: [] });
      // Each prefill rank answered every decode rank that asked it, writing or not (replicated heads).
      expect(pushes.reduce((a, o) => a + o.peers.length, 0)).toBe(Math.max(pTp, dTp));
      expect(expectHeads(p, heads, [[1, 6], [2, 0], [5, 3]])).toBeGreaterThan(0);
    }, 30_000);
  }

  it('MLA, prefill TP 2 -> decode TP 1: the first replica writes, the other answers with nothing written', async () => {
    const bootstrapPort = await freePortRange(1);
    const mla = { attention: 'mla' as const, numLayers: LAYERS, numBlocks: 8, blockSize: BLOCK_SIZE, headBytes: 72 };
    const common = { sideChannel: 'vllm' as const, host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 }, layout: mla, vllm: { bootstrapPort } };
    const producers: KvProducer[] = [];
    for (const tpRank of [0, 1]) {
      const p = await KvProducer.create({ ...common, engineId: 'mp', tpRank });
      live.push(p);
      for (let l = 0; l < LAYERS; l++) p.caches.tensorView(l)!.fill(0x40 + 0x10 * tpRank + l);
      producers.push(p);
    }
    const c = await KvConsumer.create({ ...common, engineId: 'md' });
    live.push(c);
    const params = producers[0].transferParams('xfer-mla', []);
    const [pushes, pull] = await Promise.all([Promise.all(producers.map((p) => p.push({ transfer_id: 'xfer-mla' }, [2, 3]))), c.pull(params, [5, 6])]);
    expect(pull.ok, pull.error?.message).toBe(true);
    expect(pushes.map((o) => [o.ok, o.bytes > 0])).toEqual([[true, true], [true, false]]);
    for (let l = 0; l < LAYERS; l++) for (const b of [5, 6]) expect(c.caches.blockView(l, 'latent', b)!.every((x) => x === 0x40 + l)).toBe(true);
  }, 30_000);

  it('the bootstrap server lists every prefill rank (what the proxy and decodes read)', async () => {
    const p = await pair(2, 1, 2);
    const params = p.producers[0].transferParams('x', []) as unknown as { remote_bootstrap_addr: string; remote_engine_id: string };
    const res = await fetch(`${params.remote_bootstrap_addr}/query`);
    const table = (await res.json()) as Record<string, { engine_id: string; worker_addr: Record<string, Record<string, string>> }>;
    expect(Object.keys(table)).toEqual(['0']);
    expect(table['0'].engine_id).toBe('vp');
    expect(Object.keys(table['0'].worker_addr).sort()).toEqual(['0', '1']);
    expect(table['0'].worker_addr['1']['0']).toBe(p.producers[1].registryKey);
  }, 30_000);

  it('no request token on this wire: a prefill refuses malformed requests, another tp size, an unpaired rank and a block named twice; none reaches the ledger', async () => {
    const p = await pair(2, 2, 2);
    const target = p.producers[0];
    const refused: KvRefusal[] = [];
    const failures: KvFailureRecord[] = [];
    target.on('refused', (r) => refused.push(r));
    for (const r of [...p.producers, ...p.consumers]) r.on('failure', (f) => failures.push(f));
    const params = target.transferParams('xfer-real', []);
    expect(params).not.toHaveProperty('remote_token');
    // A stranger speaking for decode rank 0 (its engine address and regions), to prefill rank 0's ROUTER.
    const me = p.consumers[0];
    const names = [...Array(LAYERS).keys()].map((i) => `model.layers.${i}.self_attn.attn`);
    const forged = (over: Partial<XferMetadata>, blocks = [3, 4]): Buffer => encodeXferMetadata({
      host: '127.0.0.1', port: me.engine.rpcPort, tpSize: 2, tpRank: 0, ppSize: 1, layoutId: 0n,
      reqBlocks: new Map([['forged', { transferId: 'xfer-real', groups: [blocks] }]]),
      regions: ownRegions(me.layout, me.caches.tensorAddresses, names),
      ...over,
    });
    const port = Number(/:(\d+)$/.exec(target.registryKey)![1]);
    const ask = async (payload: Buffer): Promise<XferResponse> => {
      let res: XferResponse | undefined;
      await dealerExchange('127.0.0.1', port, payload, (b) => ((res = parseXferResponse(b)), true), { deadline: performance.now() + 5000 });
      return res!;
    };
    expect(await ask(Buffer.from([0xc1]))).toMatchObject({ status: XFER_STATUS.ERROR });
    expect(await ask(forged({ tpSize: 3 }))).toMatchObject({ status: XFER_STATUS.ERROR });
    expect(await ask(forged({ tpRank: 1 }))).toMatchObject({ status: XFER_STATUS.ERROR });
    const twice = await ask(forged({}, [3, 3]));
    expect(twice).toMatchObject({ status: XFER_STATUS.FINISH, errReqs: ['forged'], okReqs: [] });
    expect(twice.errMsg).toContain('more than once');
    expect(refused.map((r) => r.reason)).toEqual(['malformed', 'wrong-tp-size', 'not-a-peer', 'bad-block-ids']);
    expect(refused[3]).toMatchObject({ requestId: 'xfer-real', from: { tpRank: 0, tpSize: 2, host: '127.0.0.1' } });
    expect(target.metrics().refused).toMatchObject({ malformed: 1, 'wrong-tp-size': 1, 'not-a-peer': 1, 'bad-block-ids': 1 });
    // None of it was kept: the real decode ranks' requests for the transfer are served.
    const [pushes, pulls] = await Promise.all([
      Promise.all(p.producers.map((x) => x.push({ transfer_id: 'xfer-real' }, [1, 2]))),
      Promise.all(p.consumers.map((c) => c.pull(params, [5, 6]))),
    ]);
    for (const o of [...pushes, ...pulls]) expect(o.ok, o.error?.message).toBe(true);
    expect(expectHeads(p, 2, [[1, 5], [2, 6]])).toBeGreaterThan(0);
    expect(failures).toEqual([]);
    for (const r of [...p.producers, ...p.consumers]) expect(r.takeFailures()).toEqual([]);
  }, 30_000);

  it('a prefill that never pushes: the decode gets an error answer at the abort timeout (SEND), blocks failed', async () => {
    const p = await pair(1, 1, 2, { abortTimeoutMs: 800 });
    const seen: KvFailureRecord[] = [];
    p.consumers[0].on('failure', (r) => seen.push(r));
    const params = p.producers[0].transferParams('xfer-never', []);
    const t0 = performance.now();
    const o = await p.consumers[0].pull(params, [1, 2]);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(o.ok).toBe(false);
    expect(o.failedBlockIds).toEqual([1, 2]);
    expect(o.failures).toHaveLength(1);
    expect(o.failures[0]).toMatchObject({ stage: 'SEND', code: 'REMOTE_REJECTED', side: 'decode', sideChannel: 'vllm', blockIds: [1, 2], advice: 'recompute' });
    expect(o.failures[0].detail).toContain('Timeout waiting for P side ready');
    expect(seen).toEqual(o.failures);
    expect(p.consumers[0].takeFailures()).toEqual(o.failures);
    expect(p.consumers[0].metrics().failures.SEND).toBe(1);
    // A push that comes after the decode gave up fails at once.
    const late = await p.producers[0].push({ transfer_id: 'xfer-never' }, [1, 2]);
    expect(late.ok).toBe(false);
    expect(late.failures[0].stage).toBe('BOOTSTRAP');
  }, 30_000);

  it('a decode that never asks: the push settles at the abort timeout with a BOOTSTRAP record', async () => {
    const p = await pair(1, 1, 2, { abortTimeoutMs: 600 });
    const o = await p.producers[0].push({ transfer_id: 'xfer-nobody' }, [1, 2]);
    expect(o.ok).toBe(false);
    expect(o.failures).toEqual([expect.objectContaining({ stage: 'BOOTSTRAP', code: 'TIMEOUT', side: 'prefill', advice: 'reroute', blockIds: [1, 2] })]);
    expect(p.producers[0].metrics().failures.BOOTSTRAP).toBe(1);
  }, 30_000);

  it('a bootstrap server that does not know the engine: BOOTSTRAP, reroute, without waiting for a timeout', async () => {
    const p = await pair(1, 1, 2);
    const params = { ...(p.producers[0].transferParams('xfer-x', []) as object), remote_engine_id: 'nobody' };
    const o = await p.consumers[0].pull(params, [1]);
    expect(o.ok).toBe(false);
    expect(o.failures[0]).toMatchObject({ stage: 'BOOTSTRAP', code: 'SEGMENT_NOT_FOUND', advice: 'reroute' });
  }, 30_000);

  it('rejects what cannot work with a coded error: params of another side channel, a split-K/V layout, hold()/expect()', async () => {
    const p = await pair(1, 1, 2);
    await expect(p.consumers[0].pull({ remote_engine_id: 'x', remote_host: 'h', remote_port: 1, remote_block_ids: [1], remote_request_id: 'r' }, [1])).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
    await expect(p.consumers[0].pull({ transfer_id: 'x' }, [1])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(() => p.producers[0].hold('r', [1])).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => p.consumers[0].expect('r', [1])).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    await expect(KvConsumer.create({ sideChannel: 'vllm', engineId: 'v', prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 }, layout: { numLayers: 1, numBlocks: 2, blockSize: 4, headBytes: 8, numHeads: 1 } })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  }, 30_000);

  it('the bootstrap server answers as vLLM\'s: a conflicting registration is 400, a malformed one 422', async () => {
    const s = await BootstrapServer.listen('127.0.0.1', 0);
    try {
      const post = (body: unknown): Promise<Response> => fetch(`${s.url}/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const reg = { engine_id: 'e', dp_rank: 0, tp_rank: 0, pp_rank: 0, addr: 'tcp://127.0.0.1:5555' };
      expect((await post(reg)).status).toBe(200);
      expect((await post(reg)).status).toBe(200); // a retry of the same registration
      expect((await post({ ...reg, addr: 'tcp://127.0.0.1:6666' })).status).toBe(400);
      expect((await post({ ...reg, engine_id: 'other', tp_rank: 1 })).status).toBe(400);
      expect((await post({ ...reg, dp_rank: 'zero' })).status).toBe(422);
      expect(await (await fetch(`${s.url}/query`)).json()).toEqual({ '0': { engine_id: 'e', worker_addr: { '0': { '0': 'tcp://127.0.0.1:5555' } } } });
    } finally {
      await s.close();
    }
  });
});
