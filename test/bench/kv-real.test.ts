// `bench kv` against the real vllm-ascend connector (scripts/setup-connectors.sh): its decode pulls and its
// layerwise prefill pushes the same layout through upstream's engine in the same run, and the speedups are
// numbers from that run. Skips loudly without the set-up.
import { describe, expect, it } from 'vitest';
import type { KvBenchResult } from '../../lib/bench/kv/result';
import { leftovers, startCli } from '../helpers/cli';
import { connectorsOrSkip } from '../connectors/peers/vllm-ascend-peer';

const setup = connectorsOrSkip('test/bench/kv-real.test.ts');

describe.skipIf(!setup)('bench kv: the real connector in the same run', () => {
  it('vllm-ascend decode pull (MLA and GQA) and layerwise prefill (GQA) next to mooncake-node', async () => {
    const args = ['bench', 'kv', '--model', 'deepseek-v2-lite', 'qwen2.5-7b', '--prompt-tokens', '256', '--block-size', '16', '--transfer', 'pull', 'layerwise',
      '--rounds', '1', '--requests', '3', '--real-connector', 'require', '--json', '--quiet'];
    const run = startCli(args, { timeoutMs: 240_000 });
    const r = await run.done;
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as KvBenchResult;
    const by = (model: string, transfer: string) => res.cases.find((c) => c.case.model === model && c.case.transfer === transfer)!;
    for (const [model, transfer] of [['deepseek-v2-lite', 'pull'], ['qwen2.5-7b', 'pull'], ['qwen2.5-7b', 'layerwise']] as const) {
      const v = by(model, transfer).realConnector!;
      expect(v.skipReason, `${model} ${transfer}`).toBeUndefined();
      expect(v.version).toMatch(/^0\.23\./);
      expect(v.real!.requests).toBe(3);
      expect(v.node!.requests).toBe(3);
      expect(v.real!.p50Ms).toBeGreaterThan(0);
      expect(v.speedup).toBeGreaterThan(0);
      // The bare engine ran the same ranges in the same rounds: the ceiling of the speedup.
      expect(v.engine!.requests).toBe(3);
      expect(v.engineSpeedup).toBeGreaterThan(0);
    }
    // MLA layerwise: the driver runs vllm-ascend's layerwise prefill for MHA/GQA only, and says so.
    expect(by('deepseek-v2-lite', 'layerwise').realConnector!.skipReason).toMatch(/MHA\/GQA/);
    expect(await leftovers(run.marker)).toEqual([]);
  }, 260_000);
});
