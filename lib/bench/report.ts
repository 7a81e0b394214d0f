/** What a bench run reports, and how it is printed. */

export interface RunResult {
  impl: string;
  operation: 'read' | 'write';
  blockSize: number;
  batchSize: number;
  concurrency: number;
  seconds: number;
  bytes: number;
  batches: number;
  /** Bytes per second. */
  bandwidth: number;
  /** Requests (blocks) per second. */
  opsPerSec: number;
  latencyMs: { avg: number; p50: number; p99: number; max: number };
  cpuPercent: number;
  targetCpuPercent?: number;
  /** Payload plus headers the target counted on its sockets (loopback mode). */
  targetBytes?: number;
  /** Bytes this engine copied through same-host mappings instead of TCP. */
  sameHostBytes?: number;
  loopDelayP99Ms?: number;
  rss?: { startMiB: number; endMiB: number; maxMiB: number; samples: number[] };
  errors: number;
}

/** One run of every implementation at one block size. */
export interface CompareRun {
  node: RunResult;
  upstream: RunResult[];
  /** Raw TCP references (see raw.ts); the ceiling is the best of them. */
  raw: RunResult[];
  upstreamError?: string;
  /** One core's memcpy over the same buffers: the physical limit of loopback (see raw.ts). */
  memcpy?: RunResult;
  ratios: { vsUpstreamBest?: number; vsUpstreamBestOps?: number; vsRawBest: number; vsMemcpy?: number };
}

/**
 * A block size compared `--repeat` times: every run, and the median run's figures (the run whose
 * mooncake-node bandwidth is the median) with each ratio the median of the runs' ratios.
 */
export interface CompareResult extends CompareRun {
  blockSize: number;
  runs: CompareRun[];
}


export function formatBytes(n: number): string {
  if (n >= 1 << 30 && n % (1 << 30) === 0) return `${n / (1 << 30)}G`;
  if (n >= 1 << 20 && n % (1 << 20) === 0) return `${n / (1 << 20)}M`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}K`;
  return String(n);
}

/** Rate units and their size in bytes, as upstream's transfer_engine_bench defines them (Gb, Mb, Kb are bits). */
export const REPORT_UNITS = {
  GB: 1e9,
  GiB: 2 ** 30,
  Gb: 1e9 / 8,
  MB: 1e6,
  MiB: 2 ** 20,
  Mb: 1e6 / 8,
  KB: 1e3,
  KiB: 2 ** 10,
  Kb: 1e3 / 8,
} as const;

export type ReportUnit = keyof typeof REPORT_UNITS;

/** A rate in bytes per second expressed in `unit` per second. */
export function rateIn(bytesPerSec: number, unit: ReportUnit = 'GB'): number {
  return bytesPerSec / REPORT_UNITS[unit];
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padEnd(n) : s.padStart(n);
}

/** A fixed-width table of results. */
export function table(results: RunResult[], unit: ReportUnit = 'GB'): string {
  const head = ['implementation', 'op', 'block', 'batch', 'inflight', `${unit}/s`, 'ops/s', 'avg ms', 'p50 ms', 'p99 ms', 'cpu %', 'target cpu %'];
  const rows = results.map((r) => [
    r.impl,
    r.operation,
    formatBytes(r.blockSize),
    String(r.batchSize),
    String(r.concurrency),
    rateIn(r.bandwidth, unit).toFixed(3),
    Math.round(r.opsPerSec).toLocaleString('en-US'),
    r.latencyMs.avg ? r.latencyMs.avg.toFixed(2) : '-',
    r.latencyMs.p50 ? r.latencyMs.p50.toFixed(2) : '-',
    r.latencyMs.p99 ? r.latencyMs.p99.toFixed(2) : '-',
    r.cpuPercent ? r.cpuPercent.toFixed(0) : '-',
    r.targetCpuPercent !== undefined ? r.targetCpuPercent.toFixed(0) : '-',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i], i === 0 || i === 1)).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
