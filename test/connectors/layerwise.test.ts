/**
 * MooncakeLayerwiseConnector (push) against the released code, both profiles:
 * - Node prefill -> real decode: the decode's own scheduler (update_state_after_alloc) makes the params it
 *   would post to the proxy's metaserver, its own KVCacheRecvingLayerThread answers GET_META and counts
 *   DONE_SENDING; the Node prefill writes with its built-in engine into the decode's upstream engine.
 * - real prefill -> Node decode: the prefill's own update_decoder_info (GET_META) and
 *   KVCacheSendingLayerThread._transfer_kv_cache, layer by layer, then its DONE_SENDING.
 * Bytes are compared per layer, K/V and block at the destination.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { KvConsumer, KvProducer } from '../../lib';
import { freePortRange, nodeConsumer, nodeProducer } from './helpers';
import { AscendPeer, connectorsOrSkip, PROFILES, stopAllAscendPeers } from './peers/vllm-ascend-peer';

const setup = connectorsOrSkip('test/connectors/layerwise.test.ts');

const LAYERS = 3;
const BLOCKS = 8;
const BLOCK_SIZE = 4;
const HEAD_BYTES = 16;
const HEADS = 4;

function layout(tp: number) {
  return { numLayers: LAYERS, numBlocks: BLOCKS, blockSize: BLOCK_SIZE, headBytes: HEAD_BYTES, numHeads: HEADS / tp };
}

describe.skipIf(!setup)('layerwise push with the released MooncakeLayerwiseConnector', () => {
  const live: (KvProducer | KvConsumer)[] = [];
  afterEach(async () => {
    await Promise.all(live.splice(0).map((x) => x.close()));
    await stopAllAscendPeers();
  });

  for (const profile of PROFILES) {
    describe(`profile ${profile}`, () => {
      it('Node prefill TP 2 -> real layerwise decode TP 2: every layer and block lands, DONE_SENDING completes the request', async () => {
        const tp = 2;
        const dPort = await freePortRange(tp);
        const blockLen = BLOCK_SIZE * (HEADS / tp) * HEAD_BYTES;
        const decodes: { peer: AscendPeer; tensors: bigint[][] }[] = [];
        for (let r = 0; r < tp; r++) {
          const peer = await AscendPeer.create(setup!, profile);
          const tensors = await peer.allocKv(LAYERS, 2, BLOCKS, blockLen, false);
          await peer.call({ cmd: 'start_layer_receiver', engine_id: 'vllm-decode', tp_rank: r, decode_tp: tp, side_channel_port: dPort });
          decodes.push({ peer, tensors });
        }
        const dBlocks = [6, 2, 3];
        const made = await decodes[0].peer.call({ cmd: 'layer_params', engine_id: 'vllm-decode', kv_port: dPort, tp_size: tp, block_size: BLOCK_SIZE, request_id: 'cmpl-lw-0-abcdefgh', block_ids: dBlocks, prompt_tokens: 10 });
        const params = made.params as Record<string, unknown>;
        expect(params).toMatchObject({ request_id: 'cmpl-lw-0', do_remote_decode: true, remote_block_ids: [dBlocks], remote_port: dPort, remote_tp_size: tp });
        const pPort = await freePortRange(tp);
        const producers = await Promise.all([0, 1].map((r) => nodeProducer({ profile, engineId: 'node-prefill', kvPort: pPort, prefillTp: tp, decodeTp: tp, tpRank: r, layout: layout(tp), totalKvHeads: HEADS })));
        live.push(...producers);
        producers.forEach((p, r) => {
          for (let t = 0; t < p.layout.tensorCount; t++) p.caches.tensorView(t)!.set(Buffer.from(Array.from({ length: p.layout.tensorBytes }, (_, i) => (i * 13 + t * 7 + r * 59) & 0xff)));
        });
        const pBlocks = [1, 2, 5];
        const outcomes = await Promise.all(producers.map((p) => p.push(params, pBlocks)));
        for (const o of outcomes) {
          expect(o.ok, o.error?.message).toBe(true);
          expect(o.bytes).toBe(LAYERS * 2 * pBlocks.length * blockLen);
        }
        for (const [r, d] of decodes.entries()) {
          expect(await d.peer.call({ cmd: 'layer_done', request_id: 'cmpl-lw-0', timeout: 10 })).toMatchObject({ done: true, failed: false });
          const got = await d.peer.readBlocks(d.tensors, dBlocks, blockLen);
          for (let l = 0; l < LAYERS; l++) {
            (['k', 'v'] as const).forEach((kind, k) => pBlocks.forEach((b, j) => {
              expect(got.get(`${l}/${k}/${dBlocks[j]}`)!.equals(producers[r].caches.blockView(l, kind, b)!), `rank ${r} layer ${l} ${kind} block ${b}->${dBlocks[j]}`).toBe(true);
            }));
          }
        }
      }, 90_000);

      it('a push that fails on the Node prefill: FAILED_SENDING marks the request failed (0.23); 0.18 has no such message', async () => {
        const dPort = await freePortRange(1);
        const peer = await AscendPeer.create(setup!, profile);
        await peer.allocKv(LAYERS, 2, BLOCKS, BLOCK_SIZE * HEADS * HEAD_BYTES, false);
        await peer.call({ cmd: 'start_layer_receiver', engine_id: 'vllm-decode', tp_rank: 0, decode_tp: 1, side_channel_port: dPort });
        const made = await peer.call({ cmd: 'layer_params', engine_id: 'vllm-decode', kv_port: dPort, tp_size: 1, block_size: BLOCK_SIZE, request_id: 'cmpl-lwf-0-abcdefgh', block_ids: [1], prompt_tokens: 3 });
        const params = made.params as Record<string, unknown>;
        const p = await nodeProducer({ profile, engineId: 'node-prefill', kvPort: await freePortRange(1), prefillTp: 1, decodeTp: 1, tpRank: 0, layout: layout(1), totalKvHeads: HEADS });
        live.push(p);
        const o = await p.push({ ...params, remote_block_ids: [[BLOCKS + 3]] }, [1]); // a block the decode does not have
        expect(o.ok).toBe(false);
        expect(o.failures).toEqual([expect.objectContaining({ stage: 'REGISTRATION', code: 'INVALID_ARGUMENT', side: 'prefill', sideChannel: 'vllm-ascend', blockIds: [1] })]);
        const r = await peer.call({ cmd: 'layer_done', request_id: 'cmpl-lwf-0', timeout: profile === '0.23' ? 10 : 1.5 });
        expect(r).toMatchObject(profile === '0.23' ? { done: false, failed: true } : { done: false, failed: false });
      }, 60_000);

      it('real layerwise prefill -> Node decode: GET_META, one write per layer, DONE_SENDING completes the expectation', async () => {
        const dPort = await freePortRange(1);
        const c = await nodeConsumer({ profile, engineId: 'node-decode', kvPort: dPort, prefillTp: 1, decodeTp: 1, tpRank: 0, layout: layout(1), totalKvHeads: HEADS });
        live.push(c);
        const dBlocks = [7, 0, 1];
        const x = c.expect('cmpl-rl-0', dBlocks, { timeoutMs: 20_000 });
        expect(x.params).toMatchObject({ request_id: 'cmpl-rl-0', remote_port: dPort, remote_block_ids: [dBlocks], remote_block_size: [BLOCK_SIZE] });
        const peer = await AscendPeer.create(setup!, profile);
        const blockLen = BLOCK_SIZE * HEADS * HEAD_BYTES;
        const tensors = await peer.allocKv(LAYERS, 2, BLOCKS, blockLen, true);
        const pBlocks = [3, 4, 5];
        const pushed = await peer.call({ cmd: 'layer_push', engine_id: 'vllm-prefill', tp_rank: 0, prefill_tp: 1, side_channel_port: await freePortRange(1), params: x.params, local_block_ids: pBlocks });
        expect(pushed.te_rpc_port).toBe(c.engine.rpcPort);
        const outcome = await x.done;
        expect(outcome.ok, outcome.error?.message).toBe(true);
        const src = await peer.readBlocks(tensors, pBlocks, blockLen);
        for (let l = 0; l < LAYERS; l++) {
          (['k', 'v'] as const).forEach((kind, k) => dBlocks.forEach((b, j) => {
            expect(c.caches.blockView(l, kind, b)!.equals(src.get(`${l}/${k}/${pBlocks[j]}`)!), `layer ${l} ${kind} block ${pBlocks[j]}->${b}`).toBe(true);
          }));
        }
        expect(c.metrics().notifies.received).toBe(1);
      }, 60_000);
    });
  }
});
