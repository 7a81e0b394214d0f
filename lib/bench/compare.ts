/**
 * `bench --compare` and `--sweep`: mooncake-node, upstream's transfer_engine_bench (default and
 * connection-pool modes) and a raw TCP socket reference (1 and N streams), on the same parameters in
 * the same invocation, with the ratios the project's targets are stated in.
 */
import * as fs from 'node:fs';
import { MetadataServer } from '../metadata/server';
import type { CompareResult, CompareRun, RunResult } from './report';
import { rawReference, rawReferences } from './raw';
import { runLoopback } from './loopback';
import type { BenchIO } from './io';
import type { BenchOptions } from './options';
import { formatBytes, table } from './report';
import { sweepChart } from './chart';
import { runUpstreamBench } from './upstream';
import { median } from '../util/stats';

export type { CompareResult, CompareRun } from './report';

export async function compareOnce(o: BenchOptions, metadataUrl: string, io: BenchIO): Promise<CompareRun> {
  const log = io.log;
  log(`  ${formatBytes(o.blockSize)}: mooncake-node ...`);
  const node = await runLoopback({ ...o, metadataServer: metadataUrl }, io.signal);
  const upstream: RunResult[] = [];
  let upstreamError: string | undefined;
  // Upstream on the same parameters, and with one thread (its best setting on small machines, where
  // more polling threads only compete): the baseline is the best of all of them.
  const upstreamRuns: { mode: 'default' | 'pool'; concurrency: number }[] = [];
  for (const mode of ['default', 'pool'] as const) {
    upstreamRuns.push({ mode, concurrency: o.concurrency });
    if (o.concurrency !== 1) upstreamRuns.push({ mode, concurrency: 1 });
  }
  for (const run of upstreamRuns) {
    log(`  ${formatBytes(o.blockSize)}: upstream transfer_engine_bench (${run.mode}, ${run.concurrency} thread${run.concurrency === 1 ? '' : 's'}) ...`);
    io.signal.throwIfAborted();
    try {
      upstream.push(await runUpstreamBench({ ...o, concurrency: run.concurrency }, metadataUrl, run.mode, io.signal));
    } catch (err) {
      io.signal.throwIfAborted();
      upstreamError = (err as Error).message;
      log(`    upstream unavailable: ${upstreamError.split('\n')[0]}`);
      break;
    }
  }
  io.signal.throwIfAborted();
  log(`  ${formatBytes(o.blockSize)}: raw TCP references and memcpy ...`);
  const raw = await rawReferences(o);
  const memcpy = await rawReference(o.blockSize, 0, o.durationSec, o);
  const best = (rs: RunResult[], f: (r: RunResult) => number) => (rs.length ? Math.max(...rs.map(f)) : undefined);
  const upBw = best(upstream, (r) => r.bandwidth);
  const upOps = best(upstream, (r) => r.opsPerSec);
  return {
    node,
    upstream,
    raw,
    upstreamError,
    memcpy,
    ratios: {
      vsUpstreamBest: upBw ? node.bandwidth / upBw : undefined,
      vsUpstreamBestOps: upOps ? node.opsPerSec / upOps : undefined,
      vsRawBest: node.bandwidth / best(raw, (r) => r.bandwidth)!,
      vsMemcpy: node.bandwidth / memcpy.bandwidth,
    },
  };
}

/** The median run's figures, each ratio the median over runs (see CompareResult). */
export function combineRuns(blockSize: number, runs: CompareRun[]): CompareResult {
  const byNode = [...runs].sort((a, b) => a.node.bandwidth - b.node.bandwidth);
  const mid = byNode[(byNode.length - 1) >> 1];
  const med = (f: (r: CompareRun) => number | undefined): number | undefined => {
    const xs = runs.map(f).filter((x): x is number => x !== undefined);
    return xs.length ? median(xs) : undefined;
  };
  return {
    ...mid,
    blockSize,
    runs,
    ratios: {
      vsUpstreamBest: med((r) => r.ratios.vsUpstreamBest),
      vsUpstreamBestOps: med((r) => r.ratios.vsUpstreamBestOps),
      vsRawBest: med((r) => r.ratios.vsRawBest)!,
      vsMemcpy: med((r) => r.ratios.vsMemcpy),
    },
  };
}

/** The project's stated targets for a block size (see README). */
export function targetsFor(blockSize: number): { rawMin?: number; upstreamMin?: number; metric: 'GB/s' | 'ops/s' } | undefined {
  if (blockSize === 1 << 20) return { rawMin: 0.9, upstreamMin: 1.2, metric: 'GB/s' };
  if (blockSize === 64 << 10) return { upstreamMin: 1.5, metric: 'GB/s' };
  if (blockSize === 4 << 10) return { upstreamMin: 5, metric: 'ops/s' };
  return undefined;
}

export function ratioLines(c: CompareResult): string[] {
  const out: string[] = [];
  const t = targetsFor(c.blockSize);
  const mark = (ok: boolean) => (ok ? 'met' : 'NOT met');
  const up = t?.metric === 'ops/s' ? c.ratios.vsUpstreamBestOps : c.ratios.vsUpstreamBest;
  if (up !== undefined) {
    out.push(`  vs upstream best (${t?.metric ?? 'GB/s'}): ${up.toFixed(2)}x${t?.upstreamMin ? `  (target >= ${t.upstreamMin}x: ${mark(up >= t.upstreamMin)})` : ''}`);
  } else {
    out.push(`  vs upstream: not measured (${c.upstreamError?.split('\n')[0] ?? 'unavailable'})`);
  }
  out.push(`  vs raw TCP best: ${(c.ratios.vsRawBest * 100).toFixed(0)}%${t?.rawMin ? `  (target >= ${t.rawMin * 100}%: ${mark(c.ratios.vsRawBest >= t.rawMin)})` : ''}`);
  if (c.ratios.vsMemcpy !== undefined) {
    const sameHost = c.node.impl.includes('memcpy');
    out.push(`  vs memcpy: ${(c.ratios.vsMemcpy * 100).toFixed(0)}%${sameHost && c.blockSize === 1 << 20 ? `  (same-host target >= 50% at 1M: ${mark(c.ratios.vsMemcpy >= 0.5)})` : ''}`);
  }
  if (c.node.loopDelayP99Ms !== undefined) out.push(`  event-loop delay p99: ${c.node.loopDelayP99Ms.toFixed(2)} ms (target < 10 ms: ${mark(c.node.loopDelayP99Ms < 10)})`);
  return out;
}

export async function runCompare(o: BenchOptions, io: BenchIO): Promise<void> {
  let meta: MetadataServer | undefined;
  let url = o.metadataServer;
  if (!url) {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
  }
  try {
    const sizes = o.sweep ? [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20] : [o.blockSize];
    const runs = new Map<number, CompareRun[]>(sizes.map((b) => [b, []]));
    // Repeats go round all sizes, so a load that comes and goes spreads over every size alike.
    for (let rep = 0; rep < o.repeat; rep++) {
      if (o.repeat > 1) io.log(`run ${rep + 1} of ${o.repeat}`);
      for (const blockSize of sizes) {
        // Keep each batch's bytes reasonable across the sweep.
        const batchSize = o.sweep ? Math.max(1, Math.min(o.batchSize, Math.floor((16 << 20) / blockSize))) : o.batchSize;
        const bufferSize = Math.max(o.bufferSize, blockSize * batchSize * o.concurrency);
        runs.get(blockSize)!.push(await compareOnce({ ...o, blockSize, batchSize, bufferSize }, url, io));
      }
    }
    const results = sizes.map((b) => combineRuns(b, runs.get(b)!));
    if (o.json) {
      io.out(JSON.stringify({ machine: machineInfo(), results }));
    } else {
      for (const c of results) {
        io.out(`\n${o.operation} ${formatBytes(c.blockSize)} blocks${c.runs.length > 1 ? ` (the median of ${c.runs.length} runs; ratios are medians of the runs' ratios)` : ''}:`);
        io.out(table([c.node, ...c.upstream, ...c.raw, ...(c.memcpy ? [c.memcpy] : [])], o.reportUnit));
        for (const l of ratioLines(c)) io.out(l);
      }
    }
    if (o.sweep) {
      fs.writeFileSync(o.sweep, sweepChart(results, o));
      io.log(`chart written to ${o.sweep}`);
    }
  } finally {
    await meta?.close();
  }
}

function machineInfo(): Record<string, unknown> {
  const os = require('node:os') as typeof import('node:os');
  return { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, kernel: os.release() };
}

