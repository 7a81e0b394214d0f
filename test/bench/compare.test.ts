// bench --compare --repeat: the median run and the medians of the runs' ratios; the sweep chart's min-max bars.
import { describe, expect, it } from 'vitest';
import { combineRuns, type CompareRun } from '../../lib/bench/compare';
import { sweepChart } from '../../lib/bench/chart';
import type { RunResult } from '../../lib/bench/initiator';
import { parseBenchArgs } from '../../lib/bench/options';

function run(impl: string, bandwidth: number, ops = bandwidth / 65536): RunResult {
  return { impl, operation: 'write', blockSize: 65536, batchSize: 32, concurrency: 4, seconds: 1, bytes: bandwidth, batches: 1, bandwidth, opsPerSec: ops, latencyMs: { avg: 0, p50: 0, p99: 0, max: 0 }, cpuPercent: 0, errors: 0 };
}

function compareRun(node: number, up: number, raw: number): CompareRun {
  return {
    node: run('mooncake-node (tcp)', node),
    upstream: [run('upstream', up)],
    raw: [run('raw TCP bulk, 1 stream', raw), run('raw TCP 256K calls, 2 streams (best of a scan)', raw / 2)],
    memcpy: run('memcpy', 2 * raw),
    ratios: { vsUpstreamBest: node / up, vsUpstreamBestOps: node / up, vsRawBest: node / raw, vsMemcpy: node / (2 * raw) },
  };
}

describe('bench --compare --repeat', () => {
  it('reports the median run, and each ratio as the median of the runs', () => {
    const runs = [compareRun(3e9, 1e9, 4e9), compareRun(5e9, 2e9, 5e9), compareRun(4e9, 0.5e9, 6e9)];
    const c = combineRuns(65536, runs);
    expect(c.node.bandwidth).toBe(4e9); // the run with the median mooncake-node bandwidth
    expect(c.upstream[0].bandwidth).toBe(0.5e9); // ... with its own baselines
    expect(c.ratios.vsUpstreamBest).toBe(3); // median of 3, 2.5, 8
    expect(c.ratios.vsRawBest).toBe(0.75); // median of 0.75, 1, 0.667
    expect(c.runs).toBe(runs);
  });

  it('--repeat is a flag of its own; the sweep chart draws min-max bars from the runs', () => {
    expect(parseBenchArgs(['--compare', '--repeat', '3']).repeat).toBe(3);
    expect(parseBenchArgs([]).repeat).toBe(1);
    const c = combineRuns(65536, [compareRun(3e9, 1e9, 4e9), compareRun(5e9, 2e9, 5e9), compareRun(4e9, 0.5e9, 6e9)]);
    const svg = sweepChart([c, { ...combineRuns(1 << 20, [compareRun(6e9, 2e9, 6e9)]), blockSize: 1 << 20 }], parseBenchArgs(['--sweep', '/tmp/x.svg', '--repeat', '3']));
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain('median of 3 runs, bars min-max');
    // One bar (a vertical line and two caps) per point with a spread: mooncake-node, upstream, raw and memcpy at 64K.
    expect((svg.match(/stroke-width="1.5"/g) ?? []).length).toBe(4 * 3);
    expect(svg).toContain('memcpy, 1 core (loopback limit)');
  });
});
