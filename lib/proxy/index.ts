/**
 * The PD proxy: an OpenAI-compatible router that sends each request to a prefill instance and then to a decode
 * instance, passing the prefill's kv_transfer_params along (see docs/proxy.md).
 */
export { createProxy } from './server';
export type { PdProxy, ProxyAddress, ProxyCloseOptions, ProxyStats } from './server';
export { DEFAULT_DECODER_PORT, DEFAULT_PREFILLER_PORT, DEFAULT_PROXY_PORT, POLICY_NAMES, PROXY_MODES, normalizeInstanceUrl, resolveProxyOptions } from './options';
export type {
  HealthCheckOptions,
  PolicyName,
  ProxyLogLevel,
  ProxyLogger,
  ProxyMode,
  ProxyOptions,
  RecomputeOptions,
  ResolvedProxyOptions,
  RetryOptions,
  Role,
  TimeoutOptions,
} from './options';
export { parseProxyArgs } from './flags';
export type { ProxyCommandOptions } from './flags';
export type { InstanceSnapshot } from './instances';
export type { ProxyCounters } from './metrics';
export { LeastLoadPolicy, RoundRobinPolicy, createPolicy } from './policies';
export type { LoadView, Policy } from './policies';
export { buildDecodeBody, buildPrefillBody, estimatePromptTokens, prefillKvTransferParams } from './rewrite';
export type { JsonObject } from './rewrite';
export { PROXY_USAGE, runProxyCommand } from './cli';
export type { ProxyCommandIO } from './cli';
export { formatProxyBench, runProxyBench } from './bench';
export type { LatencySummary, ProxyBenchOptions, ProxyBenchResult } from './bench';
export { PROXY_BENCH_USAGE, runProxyBenchCommand } from './bench-command';
export type { ProxyBenchCommandIO } from './bench-command';
export { startStandIn, standInToken } from './stand-ins';
export type { StandIn, StandInBehavior, StandInOptions, StandInRequest } from './stand-ins';
