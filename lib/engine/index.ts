/**
 * The engine wing: the TransferEngine facade (engine.ts) over its backends (builtin-backend.ts,
 * upstream-backend.ts), segment resolution (resolve.ts), registered memory (memory.ts), peer segments
 * (segment.ts), request batches (transfer-batch.ts), options (options.ts) and the raw binding (native.ts).
 */
export { TransferEngine } from './engine';
export type { TransferEngineOptions, TransferOptions, TransferResult, TransferRequest, BatchRequest, Opcode, TransferEngineEvents, Notify, NotifyDropInfo, PreparedBatch } from './engine';
export { MemoryRegion } from './memory';
export type { RegisterOptions, MemoryLocation } from './memory';
export { Segment } from './segment';
export type { SegmentBuffer } from './segment';
export type { UpstreamBackendInfo } from './upstream-backend';
