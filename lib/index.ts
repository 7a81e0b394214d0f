/**
 * mooncake-node: move KV-cache blocks between LLM serving nodes with a Mooncake-compatible
 * transfer engine.
 *
 *   import { TransferEngine } from 'mooncake-node';
 */
export { TransferEngine } from './engine';
export type {
  TransferEngineOptions,
  TransferOptions,
  TransferResult,
  TransferRequest,
  BatchRequest,
  Opcode,
  TaskStatus,
  TaskStatusInfo,
  TransferEngineEvents,
  Notify,
  PreparedBatch,
} from './engine';
export { MemoryRegion } from './memory';
export type { RegisterOptions, MemoryLocation } from './memory';
export { Segment } from './segment';
export type { SegmentBuffer } from './segment';
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
