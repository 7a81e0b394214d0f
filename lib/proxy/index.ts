/**
 * The PD proxy: an OpenAI-compatible router that sends each request to a prefill instance and then to a decode
 * instance, passing the prefill's kv_transfer_params along (see docs/proxy.md).
 */
export { createProxy } from './server';
export type { PdProxy, ProxyAddress, ProxyCloseOptions, ProxyStats } from './server';
export {
  DEFAULT_DECODER_PORT,
  DEFAULT_PREFILLER_PORT,
  DEFAULT_PROXY_PORT,
  POLICY_NAMES,
  PROXY_USAGE,
  normalizeInstanceUrl,
  parseProxyArgs,
  resolveProxyOptions,
} from './options';
export type {
  HealthCheckOptions,
  PolicyName,
  ProxyCommandOptions,
  ProxyLogLevel,
  ProxyLogger,
  ProxyOptions,
  ResolvedProxyOptions,
  RetryOptions,
  Role,
  TimeoutOptions,
} from './options';
export type { InstanceSnapshot } from './instances';
export type { ProxyCounters } from './metrics';
export { LeastLoadPolicy, RoundRobinPolicy, createPolicy } from './policies';
export type { LoadView, Policy } from './policies';
export { buildDecodeBody, buildPrefillBody, estimatePromptTokens, prefillKvTransferParams } from './rewrite';
export type { JsonObject } from './rewrite';
export { runProxyCommand } from './cli';
export type { ProxyCommandIO } from './cli';
export { formatProxyBench, runProxyBench, runProxyBenchCommand } from './bench';
export type { LatencySummary, ProxyBenchCommandIO, ProxyBenchOptions, ProxyBenchResult } from './bench';
export { startStandIn, standInToken } from './stand-ins';
export type { StandIn, StandInBehavior, StandInOptions, StandInRequest } from './stand-ins';
