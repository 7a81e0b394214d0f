/**
 * The KV producer/consumer layer: mooncake-node's counterpart of vllm-ascend's MooncakeConnectorV1
 * (see docs/kv.md).
 */
export { KvProducer } from './producer';
export type { KvProducerEvents, KvHold, KvHoldOptions, KvRelease, KvConsumerReport, KvPushOptions, KvLayerwisePush } from './producer';
export { KvConsumer } from './consumer';
export type { KvConsumerEvents, KvExpectation, KvPullOptions } from './consumer';
export { KvLayout, blockRuns, pairedRuns } from './layout';
export type { KvAttention, KvHeadLayout, KvTensorKind, KvLayoutSpec, KvLayoutJson, ByteRange, BlockRun, PairedRun } from './layout';
export { KvCaches, allocateHostCaches, DEFAULT_MAX_REGION_BYTES } from './caches';
export type { KvCachesInput, KvRegionInput } from './caches';
export { heldHeads, requestHash, sourcesForDecodeRank, targetsForPrefillRank, prefillRanksOf, validateTpMapping, vllmTargetRanks, vllmRequesters } from './rank-map';
export type { TpMapping, HeadSpan, HeadSlice, RankSelection } from './rank-map';
export { PyRandom, stringToInt64Hash } from './py-random';
export { KV_SIDE_CHANNELS } from './side-channel';
export type { KvSideChannel, KvSideChannelName, KvSideChannelContext, KvDoneResult, KvPushSignal, KvParamsExtra } from './side-channel';
export { planTransfer, blockPieces, failedPairs } from './plan';
export type { PlanSide, BlockPiece, TransferPlan } from './plan';
export { parseKvTransferParams, wantsRemotePrefill, alignBlocks } from './params';
export type { KvTransferParams, KvTransferParamsWire } from './params';
export { KvRegistry, kvRankKey, parseRankEntry, KV_REGISTRY_VERSION } from './registry';
export type { KvRankEntry, KvPeer, KvRegistryOptions } from './registry';
export { KV_NOTIFY_NAME, ANY_RANK, encodeKvMessage, decodeKvMessage } from './messages';
export type { KvMessage, KvRankRef } from './messages';
export type { KvTransferOutcome, KvTransferPeer, KvReleaseReason, KvMetricsSnapshot, KvDurationSummary, KvRefusal, KvRefusalReason } from './metrics';
export { KV_REFUSAL_REASONS } from './metrics';
export { FENCE_BYTES } from './fence';
export { TOKEN_PARAM } from './tokens';
export { resolveKvOptions, checkEngineId, VLLM_ASCEND_PROFILES } from './options';
export type { KvRankOptions, KvRole, KvParallelSize, ResolvedKvOptions, VllmAscendOptions, VllmAscendProfile, VllmOptions } from './options';
export { KV_FAILURE_STAGES } from './ledger';
export type { KvFailureStage, KvFailureRecord, KvFailureAdvice } from './ledger';
export { BootstrapServer, DEFAULT_BOOTSTRAP_PORT } from './vllm/bootstrap';
export type { BootstrapRegistration } from './vllm/bootstrap';
export {
  parseKvTransferConfig,
  parseMooncakeConfig,
  loadMooncakeConfig,
  metadataConnectionString,
  kvOptionsFromConfig,
  KV_CONNECTORS,
  KV_ROLES,
  METADATA_BACKENDS,
  MOONCAKE_PROTOCOLS,
} from './config';
export type { KvTransferConfig, MooncakeConfig, MetadataBackend, HostPort, KvWorkerContext } from './config';
export { fillKvPattern, checkKvPattern, patternSeed } from './pattern';
export type { KvPatternTarget, KvPatternSpec, KvPatternCheck } from './pattern';
