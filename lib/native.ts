/**
 * The raw binding (thin layer): its shape, and a loader that explains what went wrong.
 * Everything here is internal; the public API is TransferEngine (lib/engine.ts).
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { MooncakeError } from './errors';

export interface NativeEngineConfig {
  localServerName: string;
  /** 'builtin' (default) or 'mooncake' (upstream libtransfer_engine.so). */
  backend?: 'builtin' | 'mooncake';
  /** mooncake backend: library path, upstream metadata connection string, protocol, rpc port. */
  library?: string;
  metadataServer?: string;
  protocol?: string;
  rpcPort?: number;
  /** mooncake backend: 'npu:N' made current on every thread that calls into upstream. */
  device?: string;
  deviceLibrary?: string;
  ioThreads?: number;
  connectionsPerPeer?: number;
  sliceSize?: number;
  maxInflightPerConnection?: number;
  idleTimeoutMs?: number;
  connectTimeoutMs?: number;
  retries?: number;
  bindAddress?: string;
  advertiseAddress?: string;
  port?: number;
  minPort?: number;
  maxPort?: number;
  maxServerConnections?: number;
  maxServerConnectionsPerPeer?: number;
  firstByteTimeoutMs?: number;
  protoVersion?: number;
  allowedPeers?: string[];
  sameHost?: boolean;
  /** Peers with their own metrics counters (the rest count as 'other'); 0 turns per-peer metrics off. */
  metricsMaxPeers?: number;
}

export interface NativeSegmentInfo {
  id: number;
  name: string;
  protocol: string;
  ip: string;
  dataPort: number;
  protoVersion: number;
  buffers: { name: string; address: bigint; length: number }[];
}

export type CompletionCallback = (
  tokens: Float64Array,
  codes: Int32Array,
  bytes: Float64Array,
  details: (Int32Array | undefined)[],
) => void;

export interface ManagedAllocation {
  /** Absent when this Node cannot make an ArrayBuffer that large over external memory. */
  buffer?: ArrayBuffer;
  address: bigint;
  shmPath: string;
}

/** One peer's counters in one role; pairs are [read, write]. */
export interface NativePeerRow {
  peer: string;
  bytes: [number, number];
  ops: [number, number];
  failed: [number, number];
}

export interface NativeMetrics {
  initiator: NativePeerRow[];
  target: NativePeerRow[];
  /** counts: per bucket, not cumulative, one more than bounds (above every bound); empty when off. */
  latency: { bounds: number[]; counts: number[]; sum: number; count: number };
  batches: { ok: number; failed: number };
}

export interface DeviceAllocation {
  address: bigint;
  length: number;
  device: number;
}

export interface NativeEngine {
  dataPort(): number;
  // Calls that may block inside the upstream backend take a trailing `async`: true runs them on a libuv
  // pool thread and returns a Promise; false (the built-in backend) runs them inline.
  registerBuffer(memory: ArrayBuffer | ArrayBufferView, location: string, remoteAccessible: boolean, async: boolean): bigint | Promise<bigint>;
  registerAddress(address: bigint, length: number, location: string, remoteAccessible: boolean, async: boolean): void | Promise<void>;
  allocateManaged(size: number, shareable: boolean, location: string, async: boolean): ManagedAllocation | Promise<ManagedAllocation>;
  allocateDevice(location: string, size: number, async: boolean): DeviceAllocation | Promise<DeviceAllocation>;
  copyDevice(toDevice: boolean, deviceAddress: bigint, host: ArrayBufferView): Promise<void>;
  unregister(address: bigint, async: boolean): void | Promise<void>;
  openSegment(name: string, descriptorJson: string, ip: string, async: boolean): number | Promise<number>;
  closeSegment(handle: number): void;
  segmentInfo(handle: number): NativeSegmentInfo;
  submit(
    token: number,
    opcodes: Uint8Array,
    segments: Int32Array,
    locals: BigUint64Array,
    remotes: BigUint64Array,
    lengths: Float64Array,
    timeoutMs: number,
  ): void;
  cancel(token: number, reason: 'abort' | 'timeout'): void;
  allocateBatch(capacity: number): bigint;
  submitBatch(
    batchId: bigint,
    opcodes: Uint8Array,
    segments: Int32Array,
    locals: BigUint64Array,
    remotes: BigUint64Array,
    lengths: Float64Array,
  ): void;
  taskStatus(batchId: bigint, task: number): [state: number, bytes: number, code: number];
  batchStatus(batchId: bigint): [state: number, bytes: number];
  freeBatch(batchId: bigint): void;
  localDescriptor(): string;
  stats(): Record<string, number>;
  /** Per-peer counters and the batch latency histogram: one call per scrape. */
  metrics(): NativeMetrics;
  backend(): string;
  /** mooncake backend: upstream's getLocalIpAndPort ("ip:rpcPort"). */
  localEndpoint(): string;
  /** JSON: what the backend loaded (upstream: library, binding, Ascend transport, CANN libraries); '' for none. */
  backendInfo(): string;
  /** mooncake backend: upstream's notify channel. */
  sendNotify(segment: number, name: string, msg: string, async: boolean): void | Promise<void>;
  takeNotifies(): [name: string, msg: string][];
  close(): void;
  /** Upstream backend: creates the engine (on a pool thread; it talks to its metadata store). */
  start(): Promise<void>;
  /** Stops the engine on a pool thread, then settles what is pending (the upstream backend). */
  closeAsync(): Promise<void>;
}

export interface NativeBinding {
  Engine: new (config: NativeEngineConfig, onCompletions: CompletionCallback) => NativeEngine;
  setErrorFactory(factory: (status: number, message: string, index: number) => Error): void;
  codeNames(): Record<string, number>;
  hostId(): string;
  /**
   * References for `bench --compare`: N blocking TCP streams over 127.0.0.1 moving blocks from/into
   * bufferSize-byte buffers, or (streams 0) single-threaded memcpy over the same buffers.
   */
  /** streams 0: single-threaded memcpy. ioSize: bytes per send/recv call (default bulk: max(blockSize, 8 MiB)). */
  rawTcpBench(streams: number, blockSize: number, bufferSize: number, seconds: number, ioSize?: number): Promise<{ bytes: number; seconds: number }>;
  abiVersion: number;
}

let cached: NativeBinding | undefined;

/** The package root (where binding.gyp, build/ and prebuilds/ live), from lib/ or dist/. */
export const packageRoot = path.join(__dirname, '..');

/** Loads the addon once per environment (worker_threads each get their own). */
export function loadNative(): NativeBinding {
  if (cached) return cached;
  let binding: NativeBinding;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    binding = require('node-gyp-build')(packageRoot) as NativeBinding;
  } catch (err) {
    throw new MooncakeError('NATIVE_LOAD_FAILED', loadFailureMessage(err), { cause: err });
  }
  binding.setErrorFactory((status, message, index) =>
    MooncakeError.fromStatus(status, message, index >= 0 ? { index } : {}),
  );
  cached = binding;
  return binding;
}

function loadFailureMessage(err: unknown): string {
  const reason = err instanceof Error ? err.message : String(err);
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  const libc = header?.glibcVersionRuntime ? `glibc ${header.glibcVersionRuntime}` : 'not glibc';
  return [
    'mooncake-node could not load its native addon.',
    `  platform: ${process.platform}-${process.arch}, ${libc}, node ${process.version} (N-API ${process.versions.napi}), ${os.release()}`,
    `  looked in: ${path.join(packageRoot, 'build/Release')} and ${path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`)}`,
    `  reason: ${reason.split('\n')[0]}`,
    '  prebuilt: linux-x64 and linux-arm64 with glibc >= 2.28 load the shipped binary and need nothing else.',
    '  fix: elsewhere the addon compiles, which needs Python 3, make and a C++17 compiler (g++ or clang++)',
    '       on PATH: install them, then run `npm rebuild mooncake-node --build-from-source`.',
  ].join('\n');
}
