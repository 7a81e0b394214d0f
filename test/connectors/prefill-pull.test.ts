/**
 * Node prefill -> real vllm-ascend decode (pull), both released profiles. The decode is vllm-ascend's own
 * KVCacheRecvingThread: its GET_META, its address arithmetic and one batch_transfer_sync_read on the
 * upstream engine from the wheel, its DONE. The Node prefill serves the side channel and holds the blocks;
 * its params must have exactly the keys vllm-ascend's own request_finished returns.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { KvProducer } from '../../lib';
import { RouterServer } from '../../lib/kv/zmq/sockets';
import { pack, unpack } from '../../lib/kv/zmq/wire';
import { eventually, freePortRange, nodeProducer, type NodeRankSpec } from './helpers';
import { AscendPeer, connectorsOrSkip, PROFILES, stopAllAscendPeers, type Profile } from './peers/vllm-ascend-peer';

const setup = connectorsOrSkip('test/connectors/prefill-pull.test.ts');

const LAYERS = 2;
const BLOCKS = 8;
const BLOCK_SIZE = 4;
const HEAD_BYTES = 16;

async function producers(profile: Profile, tp: number, decodeTp: number, heads: number, extra: NodeRankSpec['extra'] = {}): Promise<{ ranks: KvProducer[]; kvPort: number }> {
  const kvPort = await freePortRange(tp);
  const ranks: KvProducer[] = [];
  for (let r = 0; r < tp; r++) {
    const p = await nodeProducer({ profile, engineId: 'node-prefill', kvPort, prefillTp: tp, decodeTp, tpRank: r, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: Math.max(1, heads / tp) }, totalKvHeads: heads, extra });
    ranks.push(p);
    for (let t = 0; t < p.layout.tensorCount; t++) p.caches.tensorView(t)!.set(Buffer.from(Array.from({ length: p.layout.tensorBytes }, (_, i) => (i * 7 + t * 31 + r * 101) & 0xff)));
  }
  return { ranks, kvPort };
}

async function realDecode(profile: Profile, prefillTp: number, decodeTp: number, heads: number): Promise<{ peer: AscendPeer; tensors: bigint[][]; blockLen: number }> {
  const peer = await AscendPeer.create(setup!, profile);
  const blockLen = BLOCK_SIZE * Math.max(1, heads / decodeTp) * HEAD_BYTES;
  const tensors = await peer.allocKv(LAYERS, 2, BLOCKS, blockLen, false);
  await peer.call({ cmd: 'start_receiver', engine_id: 'vllm-decode', tp_rank: 0, prefill_tp: prefillTp, decode_tp: decodeTp, heads, mla: false, side_channel_port: await freePortRange(1), block_size: BLOCK_SIZE });
  return { peer, tensors, blockLen };
}

function flat(ids: unknown): number[] {
  return Array.isArray(ids) && Array.isArray(ids[0]) ? (ids as number[][])[0] : (ids as number[]);
}

describe.skipIf(!setup)('a real vllm-ascend decode pulls from Node prefill ranks', () => {
  const live: KvProducer[] = [];
  afterEach(async () => {
    await Promise.all(live.splice(0).map((p) => p.close()));
    await stopAllAscendPeers();
  });

  for (const profile of PROFILES) {
    describe(`profile ${profile}`, () => {
      it("params have exactly the keys of vllm-ascend's request_finished", async () => {
        const { ranks } = await producers(profile, 1, 1, 2);
        live.push(...ranks);
        const hold = ranks[0].hold('cmpl-keys', [3, 4, 5], { promptTokens: 11, lastTokenId: 7 });
        const peer = await AscendPeer.create(setup!, profile);
        const real = await peer.call({
          cmd: 'request_finished', engine_id: 'node-prefill', kv_port: 30000, tp_size: 1, dp_size: 1, dp_rank: 0, block_size: BLOCK_SIZE,
          request_id: 'cmpl-keys', prompt_tokens: 11, output_token_ids: [7], kv_transfer_params: { do_remote_decode: true }, block_ids: [3, 4, 5],
        });
        const params = real.params as Record<string, unknown>;
        expect(Object.keys(hold.params)).toEqual(Object.keys(params));
        const { remote_host: _h, remote_port: _p, ...same } = params;
        expect(hold.params).toMatchObject(same);
        expect(ranks[0].release('cmpl-keys')).toBe(true);
        // Anything but a length-capped finish gives no params upstream.
        const stopped = await peer.call({
          cmd: 'request_finished', engine_id: 'node-prefill', kv_port: 30000, tp_size: 1, dp_size: 1, dp_rank: 0, block_size: BLOCK_SIZE,
          request_id: 'cmpl-stop', prompt_tokens: 11, status: 'FINISHED_STOPPED', kv_transfer_params: { do_remote_decode: true }, block_ids: [3],
        });
        expect(stopped.params).toBeNull();
      }, 60_000);

      it('equal TP: the real decode reads every layer and block, its DONE releases the hold', async () => {
        const { ranks } = await producers(profile, 1, 1, 2);
        live.push(...ranks);
        const d = await realDecode(profile, 1, 1, 2);
        const blocks = [2, 3, 4, 7];
        const hold = ranks[0].hold('cmpl-p1', blocks, { promptTokens: 15, lastTokenId: 1 });
        const local = [0, 1, 2, 5];
        await d.peer.call({ cmd: 'pull', request_id: 'd-1', remote_request_id: 'cmpl-p1', local_block_ids: local, remote_block_ids: flat(hold.params.remote_block_ids), remote_engine_id: hold.params.remote_engine_id, remote_host: hold.params.remote_host, remote_port: hold.params.remote_port, prefill_tp: 1, remote_block_size: BLOCK_SIZE });
        const done = await d.peer.call({ cmd: 'wait_done', request_id: 'd-1', timeout: 20 });
        expect(done.done).toBe(true);
        expect(done.invalid_block_ids ?? []).toEqual([]);
        const rel = await hold.released;
        expect(rel.reason).toBe('done');
        const got = await d.peer.readBlocks(d.tensors, local, d.blockLen);
        for (let l = 0; l < LAYERS; l++) {
          (['k', 'v'] as const).forEach((kind, k) => blocks.forEach((b, j) => {
            expect(got.get(`${l}/${k}/${local[j]}`)!.equals(ranks[0].caches.blockView(l, kind, b)!), `layer ${l} ${kind} block ${b}`).toBe(true);
          }));
        }
        expect(ranks[0].metrics().notifies.received).toBe(1);
      }, 60_000);

      it('Node prefill TP 2 -> real decode TP 1 (GQA, 4 heads): both ranks read, each released by its own DONE', async () => {
        const { ranks } = await producers(profile, 2, 1, 4);
        live.push(...ranks);
        const d = await realDecode(profile, 2, 1, 4);
        const blocks = [1, 2, 5];
        const holds = ranks.map((r) => r.hold('cmpl-gqa', blocks));
        const local = [6, 3, 4];
        const r = await d.peer.call({ cmd: 'pull', request_id: 'd-2', remote_request_id: 'cmpl-gqa', local_block_ids: local, remote_block_ids: blocks, remote_engine_id: 'node-prefill', remote_host: '127.0.0.1', remote_port: holds[0].params.remote_port, prefill_tp: 2 });
        expect(r.prefill_ranks).toEqual([0, 1]);
        expect((await d.peer.call({ cmd: 'wait_done', request_id: 'd-2', timeout: 20 })).done).toBe(true);
        for (const h of holds) expect((await h.released).reason).toBe('done');
        // vllm-ascend lands prefill rank i's whole block at offset i × block_len/2 of its own block (it
        // re-lays the heads on the NPU afterwards, which has no CPU counterpart).
        const got = await d.peer.readBlocks(d.tensors, local, d.blockLen);
        for (let l = 0; l < LAYERS; l++) {
          (['k', 'v'] as const).forEach((kind, k) => blocks.forEach((b, j) => {
            const want = Buffer.concat(ranks.map((p) => p.caches.blockView(l, kind, b)!));
            expect(got.get(`${l}/${k}/${local[j]}`)!.equals(want), `layer ${l} ${kind} block ${b}`).toBe(true);
          }));
        }
      }, 60_000);

      it('Node MLA prefill (nope and rope tensors) TP 2 -> real decode TP 1: the decode reads the rank its RNG picks; the other rank released at once', async () => {
        const NOPE = 64;
        const ROPE = 16;
        const kvPort = await freePortRange(2);
        const mla = { attention: 'mla' as const, numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: NOPE, ropeBytes: ROPE };
        const ranks = await Promise.all([0, 1].map((r) => nodeProducer({ profile, engineId: 'node-mla', kvPort, prefillTp: 2, decodeTp: 1, tpRank: r, layout: mla, totalKvHeads: 1 })));
        live.push(...ranks);
        ranks.forEach((p, r) => {
          for (let t = 0; t < p.layout.tensorCount; t++) p.caches.tensorView(t)!.fill(0x30 + 16 * r + t);
        });
        const peer = await AscendPeer.create(setup!, profile);
        const tensors = await peer.allocKv(LAYERS, 2, BLOCKS, [BLOCK_SIZE * NOPE, BLOCK_SIZE * ROPE], false);
        await peer.call({ cmd: 'start_receiver', engine_id: 'vllm-decode', tp_rank: 0, prefill_tp: 2, decode_tp: 1, heads: 1, mla: true, side_channel_port: await freePortRange(1), block_size: BLOCK_SIZE });
        const holds = ranks.map((p) => p.hold('cmpl-mla-p', [1, 2]));
        const r = await peer.call({ cmd: 'pull', request_id: 'd-mla', remote_request_id: 'cmpl-mla-p', local_block_ids: [4, 5], remote_block_ids: [1, 2], remote_engine_id: 'node-mla', remote_host: '127.0.0.1', remote_port: kvPort, prefill_tp: 2 });
        const rank = (r.prefill_ranks as number[])[0];
        expect((await holds[1 - rank].released).reason).toBe('not-selected');
        expect((await peer.call({ cmd: 'wait_done', request_id: 'd-mla', timeout: 20 })).done).toBe(true);
        expect((await holds[rank].released).reason).toBe('done');
        const got = await peer.readBlocks(tensors, [4, 5], [BLOCK_SIZE * NOPE, BLOCK_SIZE * ROPE]);
        for (let l = 0; l < LAYERS; l++) {
          for (const b of [4, 5]) {
            expect(got.get(`${l}/0/${b}`)!.every((x) => x === 0x30 + 16 * rank + 2 * l), `layer ${l} nope block ${b}`).toBe(true);
            expect(got.get(`${l}/1/${b}`)!.every((x) => x === 0x30 + 16 * rank + 2 * l + 1), `layer ${l} rope block ${b}`).toBe(true);
          }
        }
      }, 60_000);

      it('a decode that never sends DONE: the hold is force-freed after the abort timeout; a late DONE is counted, not fatal', async () => {
        const { ranks } = await producers(profile, 1, 1, 2, { abortTimeoutMs: 400 });
        live.push(...ranks);
        const t0 = performance.now();
        const hold = ranks[0].hold('cmpl-abandoned', [1, 2]);
        const rel = await hold.released;
        expect(rel.reason).toBe('abort-timeout');
        expect(performance.now() - t0).toBeGreaterThanOrEqual(350);
        const d = await realDecode(profile, 1, 1, 2);
        await d.peer.call({ cmd: 'pull', request_id: 'd-late', remote_request_id: 'cmpl-abandoned', local_block_ids: [1, 2], remote_block_ids: [1, 2], remote_engine_id: 'node-prefill', remote_host: '127.0.0.1', remote_port: hold.params.remote_port, prefill_tp: 1 });
        expect((await d.peer.call({ cmd: 'wait_done', request_id: 'd-late', timeout: 20 })).done).toBe(true);
        // The real decode marks the request done before it sends DONE: wait for the DONE itself.
        await eventually(() => ranks[0].metrics().holds?.lateDone === 1, 5000, 'the late DONE to be counted');
      }, 60_000);

      // The flat profile has no integer-keyed map.
      it.skipIf(profile === '0.18')('negative: metadata with string map keys (as @msgpack/msgpack would send) fails the real decode, which still sends DONE', async () => {
        const { ranks } = await producers(profile, 1, 1, 2);
        live.push(...ranks);
        // A stand-in prefill: Node's own metadata, re-encoded with the map keys turned into strings.
        const port = await freePortRange(1);
        const dones: unknown[] = [];
        const meta = (unpack(await fetchMeta(ranks[0])) as Map<string, unknown>);
        const broken = Object.fromEntries([...meta].map(([k, v]) => [k, v instanceof Map ? Object.fromEntries([...v].map(([a, b]) => [String(a), b])) : v]));
        const router = await RouterServer.bind('127.0.0.1', port, (payload) => {
          const msg = unpack(payload) as unknown[];
          if (Buffer.from(msg[0] as Buffer).toString() === 'get_meta_msg') return pack(broken);
          dones.push(msg[1]);
          return Buffer.from('ACK');
        });
        try {
          const d = await realDecode(profile, 1, 1, 2);
          await d.peer.call({ cmd: 'pull', request_id: 'd-bad', remote_request_id: 'cmpl-strkeys', local_block_ids: [1], remote_block_ids: [1], remote_engine_id: 'node-prefill', remote_host: '127.0.0.1', remote_port: port, prefill_tp: 1 });
          const done = await d.peer.call({ cmd: 'wait_done', request_id: 'd-bad', timeout: 20 });
          expect(done.done).toBe(true);
          expect(done.invalid_block_ids).toEqual([1]); // the real decode marks the blocks for recompute
          expect(d.peer.output).toMatch(/Expected `int`, got `str`/);
          await eventually(() => dones.length > 0, 5000, 'DONE from the real decode');
          expect(dones).toEqual(['cmpl-strkeys']);
        } finally {
          await router.close();
        }
      }, 60_000);

      it('negative: a str tag, a 2-element DONE and an unknown tag get no answer from a Node prefill and free nothing', async () => {
        const { ranks } = await producers(profile, 1, 1, 2);
        live.push(...ranks);
        const hold = ranks[0].hold('cmpl-n', [1]);
        const { ReqClient } = await import('../../lib/kv/zmq/sockets');
        const client = new ReqClient({ timeoutMs: 200 });
        try {
          const port = hold.params.remote_port;
          await expect(client.request('127.0.0.1', port, pack(['done_recving_msg', 'cmpl-n', null]))).rejects.toMatchObject({ code: 'TIMEOUT' });
          await expect(client.request('127.0.0.1', port, pack([Buffer.from('done_recving_msg'), 'cmpl-n']))).rejects.toMatchObject({ code: 'TIMEOUT' });
          await expect(client.request('127.0.0.1', port, pack([Buffer.from('nope'), '']))).rejects.toMatchObject({ code: 'TIMEOUT' });
          expect(ranks[0].heldRequests().map((h) => h.requestId)).toEqual(['cmpl-n']);
          expect(ranks[0].metrics().notifies.malformed).toBe(3);
          expect((await client.request('127.0.0.1', port, pack([Buffer.from('done_recving_msg'), 'cmpl-n', null]))).toString()).toBe('ACK');
          expect((await hold.released).reason).toBe('done');
        } finally {
          client.close();
        }
      }, 60_000);
    });
  }
});

async function fetchMeta(p: KvProducer): Promise<Buffer> {
  const { ReqClient } = await import('../../lib/kv/zmq/sockets');
  const c = new ReqClient();
  try {
    const [host, port] = p.registryKey.split(':');
    return await c.request(host, Number(port), pack([Buffer.from('get_meta_msg'), '']));
  } finally {
    c.close();
  }
}
