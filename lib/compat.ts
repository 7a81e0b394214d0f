/**
 * `mooncake-node/compat`: upstream Mooncake's Python names and its polled batch API, over a
 * TransferEngine, for code ported from `mooncake.engine.TransferEngine`. Opt-in: the engine's own API
 * (`write`, `read`, `transferBatch`, Promises) is what new code uses.
 *
 *   import { TransferEngine } from 'mooncake-node';
 *   import { UpstreamCompat } from 'mooncake-node/compat';
 *   const te = new UpstreamCompat(await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE' }));
 *   te.getRpcPort();
 */
import { MooncakeError, type ErrorCode } from './errors';
import { SUBMIT_PACKED, type TransferEngine } from './engine/engine';
import { formatHost } from './engine/resolve';
import { packRequests, type BatchRequest, type TransferRequest } from './engine/transfer-batch';

/** Upstream's per-task states (TransferStatusEnum). */
export type TaskStatus = 'WAITING' | 'PENDING' | 'INVALID' | 'CANCELED' | 'COMPLETED' | 'TIMEOUT' | 'FAILED';

export interface TaskStatusInfo {
  status: TaskStatus;
  transferredBytes: number;
  /** The failure's code, for FAILED and TIMEOUT tasks. */
  error?: ErrorCode;
}

interface PolledBatch {
  capacity: number;
  tasks: TaskStatusInfo[];
  inFlight: number;
}

/** Most tasks in one polled batch. */
const MAX_BATCH_CAPACITY = 1 << 24;

/** Upstream's names, bound to one engine. Batches are this object's: free them with `freeBatch`. */
export class UpstreamCompat {
  private readonly batches = new Map<bigint, PolledBatch>();
  private nextBatch = 1n;

  constructor(readonly engine: TransferEngine) {}

  /** `get_rpc_port()` */
  getRpcPort(): number {
    return this.engine.rpcPort;
  }

  /** `getLocalIpAndPort()` */
  getLocalIpAndPort(): string {
    return `${formatHost(this.engine.advertiseAddress)}:${this.engine.rpcPort}`;
  }

  /** `get_first_buffer_address(segment_name)` */
  async getFirstBufferAddress(segmentName: string): Promise<bigint> {
    return (await this.engine.openSegment(segmentName)).firstBufferAddress;
  }

  /** `transfer_sync_write(target_hostname, buffer, peer_buffer_address, length)`; rejects instead of -1. */
  async transferSyncWrite(target: string, buffer: bigint, peerBufferAddress: bigint, length: number): Promise<void> {
    await this.engine.write(await this.engine.openSegment(target), [{ local: buffer, remote: peerBufferAddress, length }]);
  }

  /** `transfer_sync_read(target_hostname, buffer, peer_buffer_address, length)` */
  async transferSyncRead(target: string, buffer: bigint, peerBufferAddress: bigint, length: number): Promise<void> {
    await this.engine.read(await this.engine.openSegment(target), [{ local: buffer, remote: peerBufferAddress, length }]);
  }

  /** `batch_transfer_sync_write(target_hostname, buffers, peer_buffer_addresses, lengths)` */
  async batchTransferSyncWrite(target: string, buffers: bigint[], peerBufferAddresses: bigint[], lengths: number[]): Promise<void> {
    await this.engine.write(await this.engine.openSegment(target), zipRequests(buffers, peerBufferAddresses, lengths));
  }

  /** `batch_transfer_sync_read(target_hostname, buffers, peer_buffer_addresses, lengths)` */
  async batchTransferSyncRead(target: string, buffers: bigint[], peerBufferAddresses: bigint[], lengths: number[]): Promise<void> {
    await this.engine.read(await this.engine.openSegment(target), zipRequests(buffers, peerBufferAddresses, lengths));
  }

  /** Allocates a batch of `capacity` tasks (upstream's allocateBatchID). */
  allocateBatch(capacity: number): bigint {
    this.assertOpen();
    if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity > MAX_BATCH_CAPACITY) {
      throw new MooncakeError('INVALID_ARGUMENT', `batch capacity must be an integer in [1, ${MAX_BATCH_CAPACITY}], got ${String(capacity)}`);
    }
    const id = this.nextBatch++;
    this.batches.set(id, { capacity, tasks: [], inFlight: 0 });
    return id;
  }

  /**
   * Submits requests into a batch (upstream's submitTransfer); task ids are consecutive from the batch's
   * current size. Throws when a request is invalid (naming its index) or the batch would overflow; the
   * tasks then run like any transfer and report through `getTransferStatus`.
   */
  submitTransfer(batchId: bigint, requests: readonly BatchRequest[]): void {
    this.assertOpen();
    const batch = this.batch(batchId);
    const packed = packRequests(this.engine, requests);
    const n = packed.lengths.length;
    if (batch.tasks.length + n > batch.capacity) throw new MooncakeError('TOO_MANY_REQUESTS', `batch ${batchId} holds ${batch.capacity} tasks: ${batch.tasks.length} submitted, ${n} more do not fit`);
    const done = this.engine[SUBMIT_PACKED](packed);
    const tasks: TaskStatusInfo[] = Array.from({ length: n }, () => ({ status: 'WAITING', transferredBytes: 0 }));
    batch.tasks.push(...tasks);
    batch.inFlight += n;
    const settle = (i: number, error: ErrorCode | undefined): void => {
      const t = tasks[i];
      if (error === undefined) {
        t.status = 'COMPLETED';
        t.transferredBytes = packed.lengths[i];
      } else {
        t.status = error === 'TIMEOUT' ? 'TIMEOUT' : 'FAILED';
        t.error = error;
      }
    };
    done.then(
      () => tasks.forEach((_t, i) => settle(i, undefined)),
      (err: unknown) => {
        const failures = err instanceof MooncakeError ? err.failures : undefined;
        const code: ErrorCode = err instanceof MooncakeError ? err.code : 'INTERNAL';
        tasks.forEach((_t, i) => settle(i, failures ? failures[i] : code));
      },
    ).finally(() => {
      batch.inFlight -= n;
    });
  }

  /** One task's state (upstream's getTransferStatus). */
  getTransferStatus(batchId: bigint, taskId: number): TaskStatusInfo {
    this.assertOpen();
    const t = this.batch(batchId).tasks[taskId];
    if (!Number.isSafeInteger(taskId) || t === undefined) throw new MooncakeError('INVALID_ARGUMENT', `task ${String(taskId)} is out of range in batch ${batchId}`);
    return { ...t };
  }

  /** The batch's state: FAILED if any task failed, COMPLETED once all did, else WAITING; bytes moved. */
  getBatchTransferStatus(batchId: bigint): { status: TaskStatus; transferredBytes: number } {
    this.assertOpen();
    let failed = false;
    let waiting = false;
    let transferredBytes = 0;
    for (const t of this.batch(batchId).tasks) {
      transferredBytes += t.transferredBytes;
      if (t.status === 'FAILED' || t.status === 'TIMEOUT' || t.status === 'CANCELED') failed = true;
      else if (t.status !== 'COMPLETED') waiting = true;
    }
    return { status: failed ? 'FAILED' : waiting ? 'WAITING' : 'COMPLETED', transferredBytes };
  }

  /** Frees a batch; BATCH_BUSY while any task is still in flight. */
  freeBatch(batchId: bigint): void {
    this.assertOpen();
    if (this.batch(batchId).inFlight > 0) throw new MooncakeError('BATCH_BUSY', `batch ${batchId} has tasks in flight`);
    this.batches.delete(batchId);
  }

  private batch(batchId: bigint): PolledBatch {
    const b = this.batches.get(batchId);
    if (b === undefined) throw new MooncakeError('BATCH_NOT_FOUND', `unknown batch id ${String(batchId)}`);
    return b;
  }

  private assertOpen(): void {
    if (this.engine.closed) throw new MooncakeError('CLOSED', 'the engine is closed');
  }
}

function zipRequests(locals: bigint[], remotes: bigint[], lengths: number[]): TransferRequest[] {
  if (locals.length !== remotes.length || locals.length !== lengths.length) {
    throw new MooncakeError('INVALID_ARGUMENT', 'buffers, peer addresses and lengths must have the same length');
  }
  return locals.map((local, i) => ({ local, remote: remotes[i], length: lengths[i] }));
}
