/**
 * vLLM's heterogeneous-TP rules, from the released code itself (TransferTopology.handshake_target_ranks and
 * _compute_sender_transfer_plan of vLLM's MooncakeConnector), against mooncake-node's 'vllm' rank mapping: for
 * every tp pairing and head count, the same decode <-> prefill ranks talk, and every byte range a prefill
 * rank writes into a decode rank's page is the one vLLM writes (or both write nothing).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { KvLayout, targetsForPrefillRank, vllmRequesters, vllmTargetRanks, type TpMapping } from '../../lib';
import { blockPieces } from '../../lib/kv';
import { stopAllVllmPeers, VllmPeer, vllmOrSkip } from './peers/vllm-peer';

const setup = vllmOrSkip('test/connectors/vllm-plans.test.ts');

const BLOCK_SIZE = 4;
const CONTENT = 16;
const UNIT = BLOCK_SIZE * CONTENT;

const CASES: { prefill_tp: number; decode_tp: number; heads: number; mla?: boolean }[] = [
  ...[[1, 1], [2, 1], [4, 1], [8, 2], [1, 2], [1, 4], [2, 4], [2, 8], [4, 2], [2, 2]].flatMap(([p, d]) => [1, 2, 4, 8].map((heads) => ({ prefill_tp: p, decode_tp: d, heads }))),
  ...[[2, 1], [4, 2], [1, 2], [2, 4], [4, 1]].map(([p, d]) => ({ prefill_tp: p, decode_tp: d, heads: 1, mla: true })),
];

function layout(heads: number, tp: number, mla: boolean): KvLayout {
  if (mla) return KvLayout.from({ attention: 'mla', numLayers: 1, numBlocks: 1, blockSize: BLOCK_SIZE, headBytes: CONTENT });
  return KvLayout.from({ numLayers: 1, numBlocks: 1, blockSize: BLOCK_SIZE, headBytes: CONTENT, numHeads: Math.max(1, heads / tp), headLayout: 'HND', combinedKv: true });
}

describe.skipIf(!setup)(`vLLM ${setup?.version ?? ''} head resharding == mooncake-node's 'vllm' mapping`, () => {
  afterAll(stopAllVllmPeers);

  it(`${CASES.length} tp pairings: the same ranks talk, the same bytes move`, async () => {
    const peer = await VllmPeer.create(setup!);
    const r = await peer.call({ cmd: 'plans', cases: CASES, unit: UNIT });
    const plans = r.plans as { targets: number[][]; requesters: number[][]; sends: Record<string, [boolean, number, number, number]> }[];
    let moved = 0;
    CASES.forEach((c, i) => {
      const name = `P${c.prefill_tp} D${c.decode_tp} heads ${c.heads}${c.mla ? ' MLA' : ''}`;
      const m: TpMapping = { attention: c.mla ? 'mla' : 'mha', totalHeads: c.heads, prefillTp: c.prefill_tp, decodeTp: c.decode_tp, selection: 'vllm' };
      const plan = plans[i];
      for (let d = 0; d < c.decode_tp; d++) expect(vllmTargetRanks(m, d), `${name} decode ${d}`).toEqual(plan.targets[d]);
      for (let p = 0; p < c.prefill_tp; p++) expect(vllmRequesters(m, p), `${name} prefill ${p}`).toEqual(plan.requesters[p]);
      const pl = layout(c.heads, c.prefill_tp, Boolean(c.mla));
      const dl = layout(c.heads, c.decode_tp, Boolean(c.mla));
      for (const [key, [send, src, dst, len]] of Object.entries(plan.sends)) {
        const [p, d] = key.split('/').map(Number);
        const slices = targetsForPrefillRank('any', m, p).filter((s) => s.decodeRank === d);
        if (!send) {
          expect(slices, `${name} ${key}: vLLM writes nothing`).toEqual([]);
          continue;
        }
        expect(slices, `${name} ${key}`).toHaveLength(1);
        const pieces = blockPieces(dl, slices[0].decodeHead, pl, slices[0].prefillHead, slices[0].count);
        expect(pieces, `${name} ${key}`).toEqual([{ local: dst, remote: src, length: len }]);
        moved++;
      }
    });
    expect(moved).toBeGreaterThan(CASES.length);
  }, 60_000);
});
