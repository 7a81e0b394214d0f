// `mooncake-node bench kv`: model shapes, case geometry, options, and whole runs as a user runs them
// (dist/cli.js in a child process): loopback, initiator + target, failures as one coded line.
import { describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib';
import { blocksPerRequest, slotBlocks, slotsFor, type KvCaseSpec } from '../../lib/bench/kv/cases';
import { bytesPerToken, kvModel, rankLayout, KV_MODELS } from '../../lib/bench/kv/models';
import { parseTokens, resolveKvBenchOptions } from '../../lib/bench/kv/options';
import { kvCases } from '../../lib/bench/kv/run';
import type { KvBenchResult } from '../../lib/bench/kv/result';
import { kvChart } from '../../lib/bench/kv/chart';
import { codedLines, leftovers, rawErrorLines, runCli, startCli } from '../helpers/cli';

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as MooncakeError).code;
  }
  return undefined;
}

describe('bench kv: model presets and case geometry', () => {
  it('presets carry the real shapes: bytes per token of KV', () => {
    expect(bytesPerToken(KV_MODELS['llama3-8b'])).toBe(32 * 2 * 8 * 128 * 2); // 128 KiB
    expect(bytesPerToken(KV_MODELS['deepseek-v2-lite'])).toBe(27 * (512 + 64) * 2);
    expect(bytesPerToken(KV_MODELS['qwen2.5-7b'])).toBe(28 * 2 * 4 * 128 * 2);
    expect(bytesPerToken(kvModel('custom', { attention: 'mla', layers: 61, headDim: 512, ropeDim: 64 }))).toBe(61 * 576 * 2);
    expect(code(() => kvModel('custom', { layers: 2 }))).toBe('INVALID_CONFIG'); // no --head-dim
    expect(code(() => kvModel('gpt-5'))).toBe('INVALID_CONFIG');
  });

  it('rank layouts split GQA heads over TP, replicate past the head count, and keep MLA whole', () => {
    const llama = KV_MODELS['llama3-8b'];
    expect(rankLayout(llama, 2, 128, 10, 'NHD')).toMatchObject({ numHeads: 4, headBytes: 256, numLayers: 32 });
    expect(rankLayout(llama, 16, 128, 10, 'NHD').numHeads).toBe(1);
    const ds = KV_MODELS['deepseek-v2-lite'];
    expect(rankLayout(ds, 4, 128, 10, 'NHD')).toMatchObject({ attention: 'mla', numHeads: 1, headBytes: 1024, ropeBytes: 128, numLayers: 27 });
    expect(code(() => rankLayout(KV_MODELS['qwen2.5-7b'], 3, 128, 10, 'NHD'))).toBe('INVALID_CONFIG');
  });

  const spec = (over: Partial<KvCaseSpec> = {}): KvCaseSpec => ({
    id: 't',
    model: KV_MODELS['llama3-8b'],
    promptTokens: 1000,
    blockSize: 128,
    prefill: { dpSize: 1, tpSize: 1 },
    decode: { dpSize: 1, tpSize: 1 },
    headLayout: 'NHD',
    transfer: 'pull',
    slots: 2,
    blocks: 'contiguous',
    sideChannel: 'mooncake-node',
    ...over,
  });

  it('each slot has its own blocks; scattered blocks never pair up consecutively', () => {
    expect(blocksPerRequest(spec())).toBe(8);
    expect(slotBlocks(spec(), 'prefill', 1)).toEqual([8, 9, 10, 11, 12, 13, 14, 15]);
    const s = spec({ blocks: 'scattered' });
    expect(slotBlocks(s, 'decode', 0)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(slotBlocks(s, 'prefill', 0)).toEqual([7, 6, 5, 4, 3, 2, 1, 0]);
  });

  it('slots are bounded by memory, and a request that cannot fit is refused', () => {
    const one = 8 * 128 * bytesPerToken(KV_MODELS['llama3-8b']); // 128 MiB
    expect(slotsFor(spec(), 4, 10 * one)).toBe(4);
    expect(slotsFor(spec(), 4, 2.5 * one)).toBe(2);
    expect(code(() => slotsFor(spec(), 4, one / 2))).toBe('INVALID_CONFIG');
  });

  it('options: defaults, token counts, cross-checks', () => {
    expect(parseTokens('2k')).toBe(2048);
    expect(parseTokens('512')).toBe(512);
    expect(code(() => parseTokens('2m'))).toBe('INVALID_CONFIG');
    const o = resolveKvBenchOptions({});
    expect(o).toMatchObject({ mode: 'loopback', promptTokens: [512, 2048, 8192], blockSize: 128, rounds: 3, transfers: ['pull'] });
    expect(code(() => resolveKvBenchOptions({ prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 4 } }))).toBe('INVALID_CONFIG');
    expect(code(() => resolveKvBenchOptions({ mode: 'initiator', metadataServer: 'http://x' }))).toBe('INVALID_CONFIG');
    // Unequal TP with GQA defaults to HND (a head slice is one range per block); MLA keeps NHD.
    const cases = kvCases(resolveKvBenchOptions({ models: [KV_MODELS['llama3-8b'], KV_MODELS['deepseek-v2-lite']], prefill: { dpSize: 1, tpSize: 4 }, decode: { dpSize: 1, tpSize: 2 }, promptTokens: [2048, 512] }));
    expect(cases.map((c) => [c.model.name, c.promptTokens, c.headLayout])).toEqual([
      ['llama3-8b', 512, 'HND'],
      ['llama3-8b', 2048, 'HND'],
      ['deepseek-v2-lite', 512, 'NHD'],
      ['deepseek-v2-lite', 2048, 'NHD'],
    ]);
  });
});

const small = ['--prompt-tokens', '64', '256', '--block-size', '16', '--rounds', '2', '--requests', '3', '--real-connector', 'off', '--json', '--quiet'];

function parse(stdout: string): KvBenchResult {
  return JSON.parse(stdout) as KvBenchResult;
}

describe('bench kv: whole runs', () => {
  it('loopback, every transfer mode, GQA 2 -> 1: verified bytes, the engine on the same ranges, ratios and a chart', async () => {
    const run = startCli(['bench', 'kv', '--model', 'qwen2.5-7b', '--prefill-tp', '2', '--transfer', 'pull', 'push', 'layerwise', ...small], { timeoutMs: 120_000 });
    const r = await run.done;
    expect(r.code, r.stderr).toBe(0);
    const res = parse(r.stdout);
    expect(res.cases.map((c) => [c.case.transfer, c.case.promptTokens])).toEqual([
      ['pull', 64],
      ['pull', 256],
      ['push', 64],
      ['push', 256],
      ['layerwise', 64],
      ['layerwise', 256],
    ]);
    for (const c of res.cases) {
      // 28 layers x K/V; 2 -> 1 with HND: a head slice is one range per block, from each of 2 prefill ranks.
      expect(c.case.headLayout).toBe('HND');
      expect(c.rangesPerRequest).toBe(28 * 2 * c.case.blocksPerRequest * 2);
      expect(c.bytesPerRequest).toBe(c.case.promptTokens * 28 * 2 * 4 * 256);
      expect(c.verified.mismatches).toBe(0);
      expect(c.verified.bytes).toBe(c.bytesPerRequest);
      expect(c.kv.requests).toBe(6);
      expect(c.kv.p50Ms).toBeGreaterThan(0);
      expect(c.kv.p99Ms).toBeGreaterThanOrEqual(c.kv.p50Ms);
      expect(c.engine!.requests).toBe(6);
      expect(c.rounds).toHaveLength(2);
      expect(c.kv.target?.cpuPercent).toBeGreaterThanOrEqual(0);
      if (c.case.transfer === 'layerwise') {
        expect(c.layerwise!.computeMs).toBeGreaterThanOrEqual(1);
        expect(c.layerwise!.tailP50Ms).toBeGreaterThan(0);
        expect(c.layerwise!.oneLayerEngineP50Ms).toBeGreaterThan(0);
        // What a tail cannot avoid: the same layer and a completion message through the bare engine.
        expect(c.layerwise!.oneLayerNotifyP50Ms).toBeGreaterThan(0);
        // 28 layers computed one after another: a request takes at least that.
        expect(c.kv.minMs).toBeGreaterThanOrEqual(28 * c.layerwise!.computeMs * 0.95);
      } else {
        expect(c.overhead!.ratio).toBeGreaterThan(0);
        expect(c.rounds.every((x) => x.ratio! > 0)).toBe(true);
      }
    }
    const svg = kvChart(res);
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain('qwen2.5-7b pull, engine alone');
    expect(await leftovers(run.marker)).toEqual([]);
  }, 150_000);

  it('initiator and target as two commands (what two hosts run), MLA with dp 2', async () => {
    const { MetadataServer } = await import('../../lib');
    const meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen(0, '127.0.0.1');
    const target = startCli(['bench', 'kv', '--mode', 'target', '--metadata-server', url, '--control-port', '0'], { timeoutMs: 120_000 });
    try {
      let control = '';
      for (let i = 0; i < 200 && control === ''; i++) {
        control = /--target (\S+)/.exec(target.stderr())?.[1] ?? '';
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(control, target.stderr()).toMatch(/^127\.0\.0\.1:\d+$/);
      const r = await runCli(['bench', 'kv', '--mode', 'initiator', '--metadata-server', url, '--target', control, '--model', 'deepseek-v2-lite', '--prefill-dp', '2', '--decode-dp', '2', '--concurrency', '2', ...small], { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      const res = parse(r.stdout);
      for (const c of res.cases) {
        expect(c.verified.mismatches).toBe(0);
        expect(c.verified.bytes).toBe(2 * c.bytesPerRequest); // both decode dp groups checked
        expect(c.rangesPerRequest).toBe(27 * 2); // latent + rope per layer, one run of blocks
        expect(c.case.slots).toBe(2);
      }
    } finally {
      target.child.kill('SIGTERM');
      const t = await target.done;
      expect(t.code, t.stderr).toBe(0);
      await meta.close();
    }
  }, 150_000);

  it('bad input is one coded line before anything starts', async () => {
    const cases: [string[], RegExp][] = [
      [['--model', 'gpt-5'], /\[INVALID_CONFIG\] unknown model 'gpt-5'/],
      [['--prompt-tokens', '32k', '--max-memory', '1G'], /\[INVALID_CONFIG\] one 32768-token request of llama3-8b needs 4\.00 GiB/],
      [['--prefill-tp', '2', '--decode-tp', '4'], /\[INVALID_CONFIG\] prefill tp 2 must be a multiple of decode tp 4/],
      [['--transfer', 'teleport'], /\[INVALID_CONFIG\] --transfer="teleport"/],
      [['--chart', '/nonexistent-dir/kv.svg'], /\[INVALID_CONFIG\] --chart="\/nonexistent-dir\/kv\.svg": cannot write/],
    ];
    for (const [argv, re] of cases) {
      const run = startCli(['bench', 'kv', ...argv], { timeoutMs: 30_000 });
      const r = await run.done;
      expect(r.code, argv.join(' ')).toBe(1);
      expect(codedLines(r.stderr), r.stderr).toHaveLength(1);
      expect(codedLines(r.stderr)[0]).toMatch(re);
      expect(rawErrorLines(r.stderr)).toEqual([]);
      expect(await leftovers(run.marker)).toEqual([]);
    }
    const help = await runCli(['bench', 'kv', '--help'], { timeoutMs: 20_000 });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: mooncake-node bench kv /);
    expect((await runCli(['bench', '--help'], { timeoutMs: 20_000 })).stdout).toMatch(/Subcommands:\n\s+kv /);
  }, 120_000);
});
