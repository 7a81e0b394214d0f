/**
 * Node decode <- real vllm-ascend prefill (pull), both released profiles. The prefill is vllm-ascend's own
 * KVCacheSendingThread (ROUTER, GET_META, DONE) with the upstream engine from the wheel, its params come
 * from its own request_finished, and its own task tracker says when it freed the blocks. The Node decode
 * reads with its built-in engine; bytes are compared per layer, K/V, block, head and token.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { KvConsumer } from '../../lib';
import { ReqClient } from '../../lib/kv/zmq/sockets';
import { pack } from '../../lib/kv/zmq/wire';
import { eventually, expectHeadsEqual, freePortRange, nodeConsumer } from './helpers';
import { AscendPeer, connectorsOrSkip, PROFILES, stopAllAscendPeers, type Profile } from './peers/vllm-ascend-peer';

const setup = connectorsOrSkip('test/connectors/decode-pull.test.ts');

const LAYERS = 2;
const BLOCKS = 8;
const BLOCK_SIZE = 4;
const HEAD_BYTES = 16;

interface Prefill {
  peers: AscendPeer[];
  tensors: bigint[][][];
  kvPort: number;
  blockLen: number;
  headsPerRank: number;
}

/** `tp` real prefill ranks of one instance ('prefill-0'), each holding `totalHeads / tp` heads (at least 1). */
async function realPrefill(profile: Profile, tp: number, decodeTp: number, totalHeads: number): Promise<Prefill> {
  const kvPort = await freePortRange(tp);
  const headsPerRank = Math.max(1, totalHeads / tp);
  const blockLen = BLOCK_SIZE * headsPerRank * HEAD_BYTES;
  const peers: AscendPeer[] = [];
  const tensors: bigint[][][] = [];
  for (let r = 0; r < tp; r++) {
    const p = await AscendPeer.create(setup!, profile, { VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT: '3' });
    peers.push(p);
    tensors.push(await p.allocKv(LAYERS, 2, BLOCKS, blockLen));
    await p.call({ cmd: 'start_sender', engine_id: 'prefill-0', tp_rank: r, prefill_tp: tp, decode_tp: decodeTp, heads: totalHeads, mla: false, side_channel_port: kvPort, block_size: BLOCK_SIZE });
  }
  return { peers, tensors, kvPort, blockLen, headsPerRank };
}

/** The real scheduler's request_finished for `blocks`, and every prefill rank told about the request as start_load_kv would. */
async function finishPrefill(p: Prefill, rid: string, blocks: number[], tp: number): Promise<{ params: Record<string, unknown>; chosen: boolean[] }> {
  const r = await p.peers[0].call({
    cmd: 'request_finished', engine_id: 'prefill-0', kv_port: p.kvPort, tp_size: tp, dp_size: 1, dp_rank: 0, block_size: BLOCK_SIZE,
    request_id: rid, prompt_tokens: blocks.length * BLOCK_SIZE - 1, output_token_ids: [7], kv_transfer_params: { do_remote_decode: true }, block_ids: blocks,
  });
  const chosen: boolean[] = [];
  for (const peer of p.peers) chosen.push(((await peer.call({ cmd: 'hold', request_ids: [rid] })).chosen as Record<string, boolean>)[rid]);
  return { params: r.params as Record<string, unknown>, chosen };
}

async function finished(peer: AscendPeer): Promise<string[]> {
  return (await peer.call({ cmd: 'finished' })).finished as string[];
}

describe.skipIf(!setup)('Node decode pulls from a real vllm-ascend prefill', () => {
  const consumers: KvConsumer[] = [];
  afterEach(async () => {
    await Promise.all(consumers.splice(0).map((c) => c.close()));
    await stopAllAscendPeers();
  });

  for (const profile of PROFILES) {
    describe(`profile ${profile}`, () => {
      it('equal TP: bytes per layer/block/head, DONE frees the prefill blocks, a prefix hit reads the tail', async () => {
        const heads = 2;
        const p = await realPrefill(profile, 1, 1, heads);
        const remote = [5, 6, 2, 3];
        const { params } = await finishPrefill(p, 'cmpl-a-0', remote, 1);
        if (profile === '0.23') expect(params.remote_block_ids).toEqual([remote]);
        else expect(params.remote_block_ids).toEqual(remote);
        const c = await nodeConsumer({ profile, engineId: 'decode-0', kvPort: await freePortRange(1), prefillTp: 1, decodeTp: 1, tpRank: 0, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: heads }, totalKvHeads: heads });
        consumers.push(c);
        const local = [0, 1, 6, 7];
        const outcome = await c.pull(params, local);
        expect(outcome.ok, outcome.error?.message).toBe(true);
        expect(outcome.bytes).toBe(LAYERS * 2 * remote.length * p.blockLen);
        const src = await p.peers[0].readBlocks(p.tensors[0], remote, p.blockLen);
        const pieces = expectHeadsEqual({
          layers: LAYERS, kinds: 2, pairs: remote.map((b, i) => [b, local[i]]), heads: [0, 1], blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES,
          src: (l, k, b, g) => ({ block: src.get(`${l}/${k}/${b}`)!, head: g, heads }),
          dst: (l, k, b, g) => ({ block: c.caches.blockView(l, k === 0 ? 'k' : 'v', b)!, head: g, heads }),
        });
        expect(pieces).toBe(LAYERS * 2 * 4 * heads * BLOCK_SIZE);
        await eventually(async () => (await finished(p.peers[0])).includes('cmpl-a-0'), 5000, 'the prefill to free cmpl-a-0 after DONE');

        // Prefix-cache hit: the decode has the first two blocks, reads the last two (tail-aligned) only.
        const second = await finishPrefill(p, 'cmpl-b-0', [1, 4, 3], 1);
        const o2 = await c.pull(second.params, [2]);
        expect(o2.ok).toBe(true);
        expect(o2.bytes).toBe(LAYERS * 2 * p.blockLen);
        const s2 = await p.peers[0].readBlocks(p.tensors[0], [3], p.blockLen);
        for (let l = 0; l < LAYERS; l++) expect(c.caches.blockView(l, 'v', 2)!.equals(s2.get(`${l}/1/3`)!)).toBe(true);
        await eventually(async () => (await finished(p.peers[0])).includes('cmpl-b-0'), 5000, 'the prefill to free cmpl-b-0');

        // A request the decode will not read (full prefix hit, or rejected before admission): an empty
        // receive still sends DONE, so the prefill frees its blocks at once.
        const third = await finishPrefill(p, 'cmpl-c-0', [6, 7], 1);
        const o3 = await c.pull(third.params, []);
        expect(o3).toMatchObject({ ok: true, bytes: 0, failedBlockIds: [] });
        await eventually(async () => (await finished(p.peers[0])).includes('cmpl-c-0'), 5000, 'the prefill to free cmpl-c-0');
        // The prefill frees on DONE before its ACK reaches this rank, which counts the DONE when the ACK comes.
        await eventually(async () => c.metrics().notifies.sent === 3, 5000, 'the ACK of the third DONE');
        expect(c.metrics().notifies).toMatchObject({ sent: 3, sendFailed: 0 });
      }, 60_000);

      it('prefill TP 2 -> decode TP 1 (GQA, 4 heads): each head slice from the rank that holds it', async () => {
        const p = await realPrefill(profile, 2, 1, 4);
        const remote = [1, 2, 3];
        const { params, chosen } = await finishPrefill(p, 'cmpl-gqa', remote, 2);
        expect(chosen).toEqual([true, true]);
        const c = await nodeConsumer({ profile, engineId: 'decode-0', kvPort: await freePortRange(1), prefillTp: 2, decodeTp: 1, tpRank: 0, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: 4 }, totalKvHeads: 4 });
        consumers.push(c);
        const local = [4, 5, 0];
        const outcome = await c.pull(params, local);
        expect(outcome.ok, outcome.error?.message).toBe(true);
        expect(outcome.peers.map((x) => x.tpRank).sort()).toEqual([0, 1]);
        const src = [await p.peers[0].readBlocks(p.tensors[0], remote, p.blockLen), await p.peers[1].readBlocks(p.tensors[1], remote, p.blockLen)];
        expectHeadsEqual({
          layers: LAYERS, kinds: 2, pairs: remote.map((b, i) => [b, local[i]]), heads: [0, 1, 2, 3], blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES,
          src: (l, k, b, g) => ({ block: src[g >> 1].get(`${l}/${k}/${b}`)!, head: g & 1, heads: 2 }),
          dst: (l, k, b, g) => ({ block: c.caches.blockView(l, k === 0 ? 'k' : 'v', b)!, head: g, heads: 4 }),
        });
        for (const peer of p.peers) await eventually(async () => (await finished(peer)).includes('cmpl-gqa'), 5000, 'both prefill ranks to free cmpl-gqa');
      }, 60_000);

      it('prefill TP 2 -> decode TP 1 (one replicated KV head): reads only the rank vllm-ascend chose; the other freed at once', async () => {
        const p = await realPrefill(profile, 2, 1, 1);
        const ids = ['cmpl-r-1', 'cmpl-r-2', 'cmpl-r-3', 'cmpl-r-4'];
        const c = await nodeConsumer({ profile, engineId: 'decode-0', kvPort: await freePortRange(1), prefillTp: 2, decodeTp: 1, tpRank: 0, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: 1 }, totalKvHeads: 1 });
        consumers.push(c);
        const picked = new Set<number>();
        for (const rid of ids) {
          const { params, chosen } = await finishPrefill(p, rid, [6, 7], 2);
          expect(chosen.filter(Boolean)).toHaveLength(1);
          const rank = chosen.indexOf(true);
          picked.add(rank);
          // The unchosen rank already let go of the request (start_load_kv's add_not_transfer_request).
          expect(await finished(p.peers[1 - rank])).toContain(rid);
          const outcome = await c.pull(params, [2, 3]);
          expect(outcome.ok, outcome.error?.message).toBe(true);
          expect(outcome.peers.map((x) => x.tpRank)).toEqual([rank]);
          const src = await p.peers[rank].readBlocks(p.tensors[rank], [6, 7], p.blockLen);
          for (let l = 0; l < LAYERS; l++) {
            expect(c.caches.blockView(l, 'k', 2)!.equals(src.get(`${l}/0/6`)!)).toBe(true);
            expect(c.caches.blockView(l, 'v', 3)!.equals(src.get(`${l}/1/7`)!)).toBe(true);
          }
          await eventually(async () => (await finished(p.peers[rank])).includes(rid), 5000, `rank ${rank} to free ${rid}`);
        }
        expect(picked.size).toBe(2); // these ids exercise both choices
      }, 90_000);

      it('MLA as vllm-ascend caches it (nope and rope tensors), prefill TP 2 -> decode TP 1: the chosen rank is read, the other freed at once', async () => {
        const NOPE = 64;
        const ROPE = 16;
        const kvPort = await freePortRange(2);
        const peers: AscendPeer[] = [];
        const tensors: bigint[][][] = [];
        for (let r = 0; r < 2; r++) {
          const peer = await AscendPeer.create(setup!, profile);
          peers.push(peer);
          tensors.push(await peer.allocKv(LAYERS, 2, BLOCKS, [BLOCK_SIZE * NOPE, BLOCK_SIZE * ROPE]));
          await peer.call({ cmd: 'start_sender', engine_id: 'prefill-mla', tp_rank: r, prefill_tp: 2, decode_tp: 1, heads: 1, mla: true, side_channel_port: kvPort, block_size: BLOCK_SIZE });
        }
        const p: Prefill = { peers, tensors, kvPort, blockLen: 0, headsPerRank: 1 };
        const c = await nodeConsumer({ profile, engineId: 'decode-mla', kvPort: await freePortRange(1), prefillTp: 2, decodeTp: 1, tpRank: 0, layout: { attention: 'mla', numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: NOPE, ropeBytes: ROPE }, totalKvHeads: 1 });
        consumers.push(c);
        for (const rid of ['cmpl-mla-1', 'cmpl-mla-2']) {
          const { params, chosen } = await finishPrefill(p, rid, [2, 3, 4], 2);
          const rank = chosen.indexOf(true);
          expect(chosen.filter(Boolean)).toHaveLength(1);
          expect(await finished(peers[1 - rank])).toContain(rid);
          const outcome = await c.pull(params, [5, 6, 7]);
          expect(outcome.ok, outcome.error?.message).toBe(true);
          expect(outcome.bytes).toBe(LAYERS * 3 * BLOCK_SIZE * (NOPE + ROPE));
          const src = await peers[rank].readBlocks(tensors[rank], [2, 3, 4], [BLOCK_SIZE * NOPE, BLOCK_SIZE * ROPE]);
          for (let l = 0; l < LAYERS; l++) {
            [2, 3, 4].forEach((b, j) => {
              expect(c.caches.blockView(l, 'latent', 5 + j)!.equals(src.get(`${l}/0/${b}`)!), `layer ${l} nope block ${b}`).toBe(true);
              expect(c.caches.blockView(l, 'rope', 5 + j)!.equals(src.get(`${l}/1/${b}`)!), `layer ${l} rope block ${b}`).toBe(true);
            });
          }
          await eventually(async () => (await finished(peers[rank])).includes(rid), 5000, `rank ${rank} to free ${rid}`);
        }
      }, 60_000);

      it('negative: a str tag and a 2-element DONE get no answer; missing remote_request_id is rejected before any message', async () => {
        const p = await realPrefill(profile, 1, 1, 2);
        const { params } = await finishPrefill(p, 'cmpl-neg', [1, 2], 1);
        const client = new ReqClient({ timeoutMs: 300 });
        try {
          await expect(client.request('127.0.0.1', p.kvPort, pack(['get_meta_msg', '']))).rejects.toMatchObject({ code: 'TIMEOUT' });
          await expect(client.request('127.0.0.1', p.kvPort, pack([Buffer.from('done_recving_msg'), 'cmpl-neg']))).rejects.toMatchObject({ code: 'TIMEOUT' });
          expect(await finished(p.peers[0])).not.toContain('cmpl-neg'); // that DONE freed nothing
          // The bin tag with all three elements is what it accepts.
          const ack = await client.request('127.0.0.1', p.kvPort, pack([Buffer.from('done_recving_msg'), 'cmpl-neg', null]));
          expect(ack.toString()).toBe('ACK');
        } finally {
          client.close();
        }
        const c = await nodeConsumer({ profile, engineId: 'decode-0', kvPort: await freePortRange(1), prefillTp: 1, decodeTp: 1, tpRank: 0, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: 2 }, totalKvHeads: 2 });
        consumers.push(c);
        const { remote_request_id: _drop, ...noId } = params;
        await expect(c.pull({ ...noId, request_id: 'cmpl-neg' } as never, [0, 1])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
        expect(c.metrics().notifies).toMatchObject({ sent: 0, sendFailed: 0 });
      }, 60_000);

      it('negative: a prefill that dies before the read fails the pull within bounds (failed blocks listed, no hang)', async () => {
        const p = await realPrefill(profile, 1, 1, 2);
        const c = await nodeConsumer({ profile, engineId: 'decode-0', kvPort: await freePortRange(1), prefillTp: 1, decodeTp: 1, tpRank: 0, layout: { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: 2 }, totalKvHeads: 2, extra: { transferTimeoutMs: 5000 } });
        consumers.push(c);
        const first = await finishPrefill(p, 'cmpl-live', [1, 2], 1);
        expect((await c.pull(first.params, [1, 2])).ok).toBe(true); // metadata now cached
        const second = await finishPrefill(p, 'cmpl-dead', [3, 4], 1);
        p.peers[0].kill();
        await p.peers[0].exit;
        const t0 = performance.now();
        const outcome = await c.pull(second.params, [3, 4]);
        expect(outcome.ok).toBe(false);
        expect(outcome.failedBlockIds).toEqual([3, 4]);
        expect(outcome.error?.code).toMatch(/CONNECT_FAILED|CONNECTION_LOST|TIMEOUT|SEGMENT_NOT_FOUND/);
        expect(performance.now() - t0).toBeLessThan(10_000);
        // The failure ledger says where: the read (or its deadline), with the blocks to recompute.
        expect(outcome.failures).toHaveLength(1);
        expect(outcome.failures[0]).toMatchObject({ side: 'decode', sideChannel: 'vllm-ascend', blockIds: [3, 4], peer: { tpRank: 0 } });
        expect(['RECV', 'TIMEOUT', 'BOOTSTRAP']).toContain(outcome.failures[0].stage);
        // vllm-ascend's REQ pattern gives up after 3 tries of 1 s each; on a loaded 2-core machine the tries
        // themselves can take longer, so the wait leaves room (the test's own limit is 60 s).
        await eventually(() => c.metrics().notifies.sendFailed === 1, 20_000, 'the DONE attempt to give up');
        // The DONE that could not be delivered is a NOTIFY record (the prefill keeps its blocks until its timeout).
        await eventually(() => c.metrics().failures.NOTIFY === 1, 8000, 'the NOTIFY record');
      }, 60_000);
    });
  }
});
