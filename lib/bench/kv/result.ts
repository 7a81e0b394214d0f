/** What `bench kv` reports (the `--json` object and `runKvBench`'s result). */
import type { KvHeadLayout } from '../../kv/layout';
import type { KvParallel, KvTransferMode } from './cases';
import type { KvBenchOptions } from './options';
import type { PhaseSamples } from './phases';
import type { TargetPhaseStats } from './target';

/** Per-request times of a phase (or of all rounds of one kind). */
export interface KvPhaseStats {
  requests: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  minMs: number;
  maxMs: number;
  /** One request's KV over its median time, GB/s (1e9 bytes). */
  gbps: number;
  /** Everything moved over the phases' wall time, GB/s (counts concurrency). */
  aggregateGbps: number;
  /** This process's CPU, % of one core. */
  cpuPercent: number;
  /** CPU time per request, ms: this process (all its threads, kernel time included) and the target's. */
  cpuMsPerRequest: number;
  targetCpuMsPerRequest?: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  target?: TargetPhaseStats;
}

export interface KvRealConnectorResult {
  /** Why it did not run. */
  skipReason?: string;
  /** Which real path: the decode's pull (KVCacheRecvingThread) or the layerwise prefill's writes. */
  path?: 'vllm-ascend decode pull' | 'vllm-ascend layerwise prefill';
  version?: string;
  profile?: string;
  /** mooncake-node on the same side channel, layout and peer. */
  node?: KvPhaseStats;
  real?: KvPhaseStats;
  /** The same ranges through the bare engine, in the same rounds (mooncake-node's ceiling). */
  engine?: KvPhaseStats;
  /** Real time / mooncake-node time (medians per round, then the median). */
  speedup?: number;
  /** Real time / bare-engine time, likewise: the largest speedup any KV layer on this engine could show. */
  engineSpeedup?: number;
  targetMin?: number;
  met?: boolean;
  note?: string;
}

export interface KvCaseResult {
  case: {
    id: string;
    model: string;
    description: string;
    attention: 'mha' | 'mla';
    promptTokens: number;
    blockSize: number;
    blocksPerRequest: number;
    prefill: KvParallel;
    decode: KvParallel;
    headLayout: KvHeadLayout;
    transfer: KvTransferMode;
    blocks: 'contiguous' | 'scattered';
    concurrency: number;
    slots: number;
  };
  /** KV bytes one request moves (all ranks). */
  bytesPerRequest: number;
  /** Transfer requests (coalesced ranges) one request issues, all ranks. */
  rangesPerRequest: number;
  /** Pattern check of the warm-up requests on the decode side. */
  verified: { bytes: number; mismatches: number };
  kv: KvPhaseStats;
  /** The same ranges through the bare engine (prepared batches). */
  engine?: KvPhaseStats;
  rounds: { kvP50Ms: number; engineP50Ms?: number; ratio?: number }[];
  /** KV layer time / engine time (median of the rounds' medians); target <= 1.1. */
  overhead?: { ratio: number; targetMax: number; met: boolean };
  layerwise?: {
    computeMs: number;
    computeTotalMs: number;
    oneLayerEngineP50Ms?: number;
    /**
     * One layer through the bare engine, then one notify to each decode rank over a kept-alive handshake
     * connection (as push_done travels), after the same idle as the compute: what a tail cannot avoid.
     */
    oneLayerNotifyP50Ms?: number;
    /** From the last layer computed to the KV complete (push_done acknowledged). */
    tailP50Ms: number;
    tailP99Ms: number;
    tailRatio?: number;
    met?: boolean;
  };
  realConnector?: KvRealConnectorResult;
}

export interface KvBenchResult {
  options: Omit<KvBenchOptions, 'models'> & { models: unknown };
  machine: Record<string, unknown>;
  cases: KvCaseResult[];
}

export function summarizePhase(p: PhaseSamples, bytesPerRequest: number): KvPhaseStats {
  const d = [...p.durations].sort((a, b) => a - b);
  const at = (q: number) => d[Math.min(d.length - 1, Math.floor(q * d.length))] ?? 0;
  const p50 = at(0.5);
  return {
    requests: d.length,
    p50Ms: p50,
    p99Ms: at(0.99),
    meanMs: d.reduce((a, x) => a + x, 0) / Math.max(1, d.length),
    minMs: d[0] ?? 0,
    maxMs: d[d.length - 1] ?? 0,
    gbps: p50 > 0 ? bytesPerRequest / (p50 / 1000) / 1e9 : 0,
    aggregateGbps: p.seconds > 0 ? p.bytes / p.seconds / 1e9 : 0,
    cpuPercent: p.cpuPercent,
    cpuMsPerRequest: (p.cpuPercent / 100) * p.seconds * 1000 / Math.max(1, d.length),
    ...(p.target ? { targetCpuMsPerRequest: (p.target.cpuPercent / 100) * p.seconds * 1000 / Math.max(1, d.length) } : {}),
    loopDelayP99Ms: p.loopDelayP99Ms,
    loopDelayMaxMs: p.loopDelayMaxMs,
    ...(p.target ? { target: p.target } : {}),
  };
}
