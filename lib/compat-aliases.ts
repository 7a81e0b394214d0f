/**
 * Deprecated: upstream's Python names on TransferEngine itself, as earlier releases had them. Each one
 * delegates to an UpstreamCompat bound to the engine (`mooncake-node/compat`), which new code uses directly;
 * the package root installs them so existing callers keep working.
 */
import { TransferEngine } from './engine/engine';
import { UpstreamCompat, type TaskStatus, type TaskStatusInfo } from './compat';
import type { BatchRequest } from './engine/transfer-batch';

declare module './engine/engine' {
  interface TransferEngine {
    /** @deprecated use `engine.rpcPort`, or `new UpstreamCompat(engine).getRpcPort()` from 'mooncake-node/compat' */
    getRpcPort(): number;
    /** @deprecated use `new UpstreamCompat(engine).getLocalIpAndPort()` from 'mooncake-node/compat' */
    getLocalIpAndPort(): string;
    /** @deprecated use `(await engine.openSegment(name)).firstBufferAddress` */
    getFirstBufferAddress(segmentName: string): Promise<bigint>;
    /** @deprecated use `engine.write()`, or UpstreamCompat from 'mooncake-node/compat' */
    transferSyncWrite(target: string, buffer: bigint, peerBufferAddress: bigint, length: number): Promise<void>;
    /** @deprecated use `engine.read()`, or UpstreamCompat from 'mooncake-node/compat' */
    transferSyncRead(target: string, buffer: bigint, peerBufferAddress: bigint, length: number): Promise<void>;
    /** @deprecated use `engine.write()`, or UpstreamCompat from 'mooncake-node/compat' */
    batchTransferSyncWrite(target: string, buffers: bigint[], peerBufferAddresses: bigint[], lengths: number[]): Promise<void>;
    /** @deprecated use `engine.read()`, or UpstreamCompat from 'mooncake-node/compat' */
    batchTransferSyncRead(target: string, buffers: bigint[], peerBufferAddresses: bigint[], lengths: number[]): Promise<void>;
    /** @deprecated use `engine.transferBatch()`, or UpstreamCompat from 'mooncake-node/compat' */
    allocateBatch(capacity: number): bigint;
    /** @deprecated use `engine.transferBatch()`, or UpstreamCompat from 'mooncake-node/compat' */
    submitTransfer(batchId: bigint, requests: readonly BatchRequest[]): void;
    /** @deprecated use `engine.transferBatch()`, or UpstreamCompat from 'mooncake-node/compat' */
    getTransferStatus(batchId: bigint, taskId: number): TaskStatusInfo;
    /** @deprecated use `engine.transferBatch()`, or UpstreamCompat from 'mooncake-node/compat' */
    getBatchTransferStatus(batchId: bigint): { status: TaskStatus; transferredBytes: number };
    /** @deprecated use `engine.transferBatch()`, or UpstreamCompat from 'mooncake-node/compat' */
    freeBatch(batchId: bigint): void;
  }
}

const ALIASES = [
  'getRpcPort',
  'getLocalIpAndPort',
  'getFirstBufferAddress',
  'transferSyncWrite',
  'transferSyncRead',
  'batchTransferSyncWrite',
  'batchTransferSyncRead',
  'allocateBatch',
  'submitTransfer',
  'getTransferStatus',
  'getBatchTransferStatus',
  'freeBatch',
] as const satisfies readonly (keyof UpstreamCompat)[];

/** One UpstreamCompat per engine, so polled batches allocated through the aliases stay findable. */
const bound = new WeakMap<TransferEngine, UpstreamCompat>();

function compatOf(engine: TransferEngine): UpstreamCompat {
  let c = bound.get(engine);
  if (c === undefined) {
    c = new UpstreamCompat(engine);
    bound.set(engine, c);
  }
  return c;
}

for (const name of ALIASES) {
  Object.defineProperty(TransferEngine.prototype, name, {
    value: function (this: TransferEngine, ...args: unknown[]): unknown {
      const c = compatOf(this);
      return (c[name] as (...a: unknown[]) => unknown).apply(c, args);
    },
    writable: true,
    configurable: true,
  });
}
