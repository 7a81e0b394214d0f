/**
 * The raw binding (thin layer): its shape, and a loader that explains what went wrong.
 * Everything here is internal; the public API is TransferEngine (engine.ts).
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { MooncakeError } from '../errors';
import type { TransferEngineOptions } from './options';

/** The engine options the native engine reads, under the names `TransferEngineOptions` gives them. */
type NativeOptionNames =
  | 'backend' | 'library' | 'metadataServer' | 'protocol' | 'rpcPort' | 'device' | 'ascendRuntimeLibrary'
  | 'ioThreads' | 'connectionsPerPeer' | 'sliceSize' | 'maxInflightPerConnection' | 'idleTimeoutMs' | 'connectTimeoutMs'
  | 'bindAddress' | 'advertiseAddress' | 'dataPort' | 'maxServerConnections' | 'maxServerConnectionsPerPeer'
  | 'firstByteTimeoutMs' | 'tcpProtoVersion' | 'allowedPeers' | 'sameHostFastPath' | 'metricsMaxPeers';

/** The engine's settings: those options, plus what the facade works out. */
export interface NativeEngineConfig extends Partial<Pick<TransferEngineOptions, NativeOptionNames>> {
  localServerName: string;
  /** Where a free data port is looked for when `dataPort` is 0 (upstream's RPC port range rule). */
  minPort?: number;
  maxPort?: number;
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

/**
 * One native engine. Control-plane calls return Promises (the binding runs them on a pool thread when
 * the backend's calls may block); `submit` is synchronous and completes through the completion callback.
 */
export interface NativeEngine {
  /** Starts the data plane (the upstream backend creates its engine and publishes its metadata). */
  start(): Promise<void>;
  /** Stops the engine; pending transfers complete with CLOSED first. Idempotent. */
  close(): Promise<void>;
  registerBuffer(memory: ArrayBuffer | ArrayBufferView, location: string, remoteAccessible: boolean): Promise<bigint>;
  registerAddress(address: bigint, length: number, location: string, remoteAccessible: boolean): Promise<void>;
  allocateManaged(size: number, shareable: boolean, location: string): Promise<ManagedAllocation>;
  allocateDevice(location: string, size: number): Promise<DeviceAllocation>;
  copyDevice(toDevice: boolean, deviceAddress: bigint, host: ArrayBufferView): Promise<void>;
  unregister(address: bigint): Promise<void>;
  /** Installs (or refreshes) a peer from its descriptor and numeric ip; answers with what it learned. */
  openSegment(name: string, descriptorJson: string, ip: string): Promise<NativeSegmentInfo>;
  closeSegment(handle: number): Promise<void>;
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
  dataPort(): number;
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
  sendNotify(segment: number, name: string, msg: string): Promise<void>;
  takeNotifies(): [name: string, msg: string][];
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
}

let cached: NativeBinding | undefined;

/** The package root (where binding.gyp, build/ and prebuilds/ live), from lib/engine/ or dist/engine/. */
export const packageRoot = path.join(__dirname, '..', '..');

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
