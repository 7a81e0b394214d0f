/**
 * The KV benchmark as an API (`mooncake-node bench kv` prints what `runKvBench` returns). Its modules load
 * when it first runs, so importing the package does not pull in the bench.
 */
import type { KvBenchHooks } from './run';
import type { KvBenchOptions } from './options';
import type { KvBenchResult } from './result';
import type { KvModel } from './models';

export { KV_MODELS } from './models';
export type { KvModel } from './models';
export type { KvBenchOptions } from './options';
export type { KvBenchHooks } from './run';
export type { KvBenchResult, KvCaseResult, KvPhaseStats, KvRealConnectorResult } from './result';
export type { KvTransferMode } from './cases';

/**
 * Runs the KV benchmark (loopback by default: a metadata server and a target process of its own) and
 * returns every case's figures. Options default as `mooncake-node bench kv` does; `models` takes presets
 * from KV_MODELS (or your own KvModel).
 */
export async function runKvBench(options: Partial<KvBenchOptions> & { models?: KvModel[] } = {}, hooks: KvBenchHooks = {}): Promise<KvBenchResult> {
  return (await import('./run')).runKvBench(options, hooks);
}
