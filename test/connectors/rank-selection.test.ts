/**
 * Rank choice, bit for bit, against vllm-ascend's own code: the released
 * MooncakeConnectorWorker._get_remote_ranks_for_req (0.18.0 and 0.23.0.post1) produces the table, for 1000
 * request ids × every TP/head combination below; mooncake-node's mapping with selection 'vllm-ascend' must
 * give every decode rank the same prefill ranks in the same order, and every prefill rank must agree on
 * whether it was chosen (an unchosen prefill rank frees its blocks at once).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { prefillRanksOf, sourcesForDecodeRank, targetsForPrefillRank, type TpMapping } from '../../lib/kv/rank-map';
import { AscendPeer, connectorsOrSkip, PROFILES, stopAllAscendPeers } from './peers/vllm-ascend-peer';

const setup = connectorsOrSkip('test/connectors/rank-selection.test.ts');

interface Case {
  prefill_tp: number;
  decode_tp: number;
  heads: number;
  mla: boolean;
}

const CASES: Case[] = [
  // MLA: every prefill rank holds the whole latent; the RNG picks decode_tp of them.
  ...[[2, 1], [4, 1], [4, 2], [8, 2], [8, 4], [16, 4], [16, 8], [32, 8], [4, 4]].map(([p, d]) => ({ prefill_tp: p, decode_tp: d, heads: 1, mla: true })),
  // GQA with more prefill ranks than KV heads: replica groups picked by the RNG.
  ...[[8, 4, 2], [8, 2, 2], [4, 1, 2], [4, 2, 2], [8, 2, 4], [8, 4, 4], [16, 2, 4], [16, 8, 4], [8, 8, 2], [64, 8, 4]].map(([p, d, h]) => ({ prefill_tp: p, decode_tp: d, heads: h, mla: false })),
  // GQA with prefill TP <= heads: no choice to make (contiguous groups).
  ...[[8, 2, 8], [4, 1, 8], [4, 4, 8], [2, 1, 32]].map(([p, d, h]) => ({ prefill_tp: p, decode_tp: d, heads: h, mla: false })),
];

const IDS = [...Array(1000).keys()].map((i) => (i % 3 === 0 ? `cmpl-${i}-0-${(i * 2654435761 >>> 0).toString(16)}` : i % 3 === 1 ? `chatcmpl-${i}-\u00e9\u4e2d` : `req-${i}`));

describe.skipIf(!setup)('rank selection agrees with vllm-ascend', () => {
  afterAll(() => stopAllAscendPeers());

  for (const profile of PROFILES) {
    it(`profile ${profile}: ${IDS.length} request ids × ${CASES.length} TP/head combinations`, async () => {
      const peer = await AscendPeer.create(setup!, profile);
      const r = await peer.call({ cmd: 'ranks', cases: CASES, ids: IDS }, 120_000);
      await peer.stopped();
      const table = r.table as number[][][][];
      expect(table).toHaveLength(CASES.length);
      let compared = 0;
      CASES.forEach((c, ci) => {
        const m: TpMapping = { attention: c.mla ? 'mla' : 'mha', totalHeads: c.mla ? 1 : c.heads, prefillTp: c.prefill_tp, decodeTp: c.decode_tp, selection: 'vllm-ascend' };
        const mine = IDS.map((id) => [...Array(c.decode_tp).keys()].map((d) => prefillRanksOf(sourcesForDecodeRank(id, m, d))));
        const real = table[ci];
        const firstBad = IDS.findIndex((_id, i) => JSON.stringify(mine[i]) !== JSON.stringify(real[i]));
        expect(firstBad, `${JSON.stringify(c)}: id ${IDS[firstBad]} mooncake-node ${JSON.stringify(mine[firstBad])} vllm-ascend ${JSON.stringify(real[firstBad])}`).toBe(-1);
        // The prefill side: chosen or not, as the union of the decode ranks' lists says.
        const chosenMine = IDS.map((id) => [...Array(c.prefill_tp).keys()].filter((p) => targetsForPrefillRank(id, m, p).length > 0));
        const chosenReal = real.map((lists) => [...new Set(lists.flat())].sort((a, b) => a - b));
        expect(chosenMine, JSON.stringify(c)).toEqual(chosenReal);
        compared += IDS.length;
      });
      expect(compared).toBe(IDS.length * CASES.length);
    }, 180_000);
  }

  it("mooncake-node's own hash disagrees with vllm-ascend for MLA 4→2 (why the selection is explicit)", async () => {
    const peer = await AscendPeer.create(setup!, '0.23');
    const c = { prefill_tp: 4, decode_tp: 2, heads: 1, mla: true };
    const r = await peer.call({ cmd: 'ranks', cases: [c], ids: IDS });
    await peer.stopped();
    const own: TpMapping = { attention: 'mla', totalHeads: 1, prefillTp: 4, decodeTp: 2 };
    const agree = IDS.filter((id, i) => JSON.stringify([0, 1].map((d) => prefillRanksOf(sourcesForDecodeRank(id, own, d)))) === JSON.stringify((r.table as number[][][][])[0][i])).length;
    expect(agree).toBeLessThan(IDS.length / 2);
  }, 60_000);
});
