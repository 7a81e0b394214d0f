/**
 * The engine wing: the TransferEngine facade (engine.ts) over its backends (backend.ts,
 * builtin-backend.ts, upstream-backend.ts), segment resolution (resolve.ts), registered memory
 * (memory.ts, regions.ts), peer segments (segment.ts), request batches and transfers in flight
 * (transfer-batch.ts, transfers.ts), options (options.ts), metrics (metrics.ts) and the raw binding
 * (native.ts).
 */
export { TransferEngine } from './engine';
export type { TransferEngineOptions, TransferOptions, TransferResult, TransferRequest, BatchRequest, Opcode, TransferEngineEvents, Notify, NotifyDropInfo, PreparedBatch } from './engine';
export { MemoryRegion } from './memory';
export type { RegisterOptions, MemoryLocation } from './memory';
export { Segment } from './segment';
export type { SegmentBuffer } from './segment';
export type { UpstreamBackendInfo } from './upstream-backend';
