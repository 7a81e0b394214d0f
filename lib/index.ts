/**
 * mooncake-node: move KV-cache blocks between LLM serving nodes with a Mooncake-compatible
 * transfer engine.
 *
 *   import { TransferEngine } from 'mooncake-node';
 */
export { TransferEngine } from './engine';
// Deprecated upstream names on TransferEngine itself (see compat-aliases.ts).
import './compat-aliases';
export type {
  TransferEngineOptions,
  TransferOptions,
  TransferResult,
  TransferRequest,
  BatchRequest,
  Opcode,
  TransferEngineEvents,
  Notify,
  NotifyDropInfo,
  PreparedBatch,
} from './engine';
/** @deprecated Upstream's polled batch states: import them from 'mooncake-node/compat'. */
export type { TaskStatus, TaskStatusInfo } from './compat';
export type { UpstreamBackendInfo } from './engine/upstream-backend';
export { findMooncakeWheel, TESTED_WHEEL_VERSIONS } from './engine/upstream-wheel';
export type { MooncakeWheel } from './engine/upstream-wheel';
export { MemoryRegion } from './engine/memory';
export type { RegisterOptions, MemoryLocation } from './engine/memory';
export { Segment } from './engine/segment';
export type { SegmentBuffer } from './engine/segment';
export { MooncakeError, StatusCodes, codeForStatus, isMooncakeError } from './errors';
export type { ErrorCode, EngineCode, MooncakeErrorOptions } from './errors';
export {
  MetadataServer,
  HttpMetadataStore,
  createMetadataStore,
  registerMetadataBackend,
  parseMetadataConnectionString,
  isP2PHandshake,
  P2P_HANDSHAKE,
  rpcMetaKey,
  segmentKey,
  metadataKeyPrefix,
} from './metadata';
export type { MetadataStore, MetadataServerOptions, MetadataConnection } from './metadata';

// KV producer/consumer layer (docs/kv.md).
export {
  KvProducer,
  KvConsumer,
  KvLayout,
  KvCaches,
  KvRegistry,
  allocateHostCaches,
  blockRuns,
  pairedRuns,
  heldHeads,
  requestHash,
  sourcesForDecodeRank,
  targetsForPrefillRank,
  validateTpMapping,
  vllmTargetRanks,
  vllmRequesters,
  planTransfer,
  parseKvTransferParams,
  wantsRemotePrefill,
  alignBlocks,
  kvRankKey,
  KV_NOTIFY_NAME,
  KV_SIDE_CHANNELS,
  KV_FAILURE_STAGES,
  VLLM_ASCEND_PROFILES,
  BootstrapServer,
  DEFAULT_BOOTSTRAP_PORT,
  parseKvTransferConfig,
  parseMooncakeConfig,
  loadMooncakeConfig,
  metadataConnectionString,
  kvOptionsFromConfig,
  fillKvPattern,
  checkKvPattern,
  patternSeed,
} from './kv';
export type {
  KvProducerEvents,
  KvConsumerEvents,
  KvHold,
  KvRelease,
  KvConsumerReport,
  KvPushOptions,
  KvLayerwisePush,
  KvPullOptions,
  KvExpectation,
  KvLayoutSpec,
  KvAttention,
  KvHeadLayout,
  KvTensorKind,
  KvCachesInput,
  KvRegionInput,
  HeadSlice,
  TpMapping,
  KvTransferParams,
  KvTransferParamsWire,
  KvHoldOptions,
  KvSideChannelName,
  VllmAscendOptions,
  VllmAscendProfile,
  VllmOptions,
  KvFailureStage,
  KvFailureRecord,
  KvFailureAdvice,
  BootstrapRegistration,
  RankSelection,
  KvRankEntry,
  KvTransferOutcome,
  KvTransferPeer,
  KvReleaseReason,
  KvMetricsSnapshot,
  KvRankOptions,
  KvRole,
  KvParallelSize,
  KvTransferConfig,
  MooncakeConfig,
  KvWorkerContext,
  KvPatternSpec,
  KvPatternCheck,
} from './kv';
export { createProxy, runProxyBench } from './proxy';
export type { PdProxy, ProxyOptions, ProxyAddress, ProxyStats, ProxyBenchOptions, ProxyBenchResult, InstanceSnapshot, PolicyName } from './proxy';
export { MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from './metrics';
export type { MetricsRegistryOptions, PromClientRegistry, MetricFamily, MetricsSource, MetricType, Labels, ValueSample, HistogramSample } from './metrics';
export { runKvBench, KV_MODELS } from './bench/kv';
export type { KvBenchOptions, KvBenchHooks, KvBenchResult, KvCaseResult, KvPhaseStats, KvRealConnectorResult, KvModel, KvTransferMode } from './bench/kv';
