/**
 * What the facade needs from a backend, so it never asks which one it has. The built-in backend runs
 * mooncake-node's own engine with its handshake daemon and metadata publisher (builtin-backend.ts);
 * the `mooncake` backend loads upstream's libtransfer_engine.so, which publishes and shakes hands itself
 * (upstream-backend.ts).
 */
import type { MooncakeError } from '../errors';
import type { Notify, NotificationQueue } from '../handshake';
import type { HandshakeServerStats } from '../handshake/server';
import type { MetadataStore } from '../metadata/store';
import type { CompletionCallback, NativeBinding, NativeEngine } from './native';
import type { TransferEngineOptions } from './options';
import type { ResolvedSegment } from './resolve';
import type { Segment } from './segment';

/** What the `mooncake` backend loaded: `TransferEngine#upstream`, and what `mooncake-node doctor` prints. */
export interface UpstreamBackendInfo {
  /** The libtransfer_engine.so in use. */
  library: string;
  /** How it was found: the `library` option, MOONCAKE_TE_LIBRARY, an installed wheel, or the loader path. */
  source: 'option' | 'env' | 'wheel' | 'loader-path';
  /** The wheel it belongs to, when it came from one. */
  wheel?: { package: string; version: string; tested: boolean };
  /** Bound lazily: an Ascend build whose transport cannot run here, used for TCP (MC_FORCE_TCP). */
  lazyBinding: boolean;
  forceTcp: boolean;
  /** The build's Ascend transport: not in this build, ready to run, or unusable (see ascendProblem). */
  ascendTransport: 'absent' | 'ready' | 'unusable';
  ascendProblem?: string;
  /** The CANN libraries loaded for it (`standin` names a mooncake-node test stand-in, never CANN). */
  cann: { name: string; path?: string; standin?: string }[];
}

/** What a backend is made with. */
export interface BackendContext {
  /** The caller's options over the environment's defaults. */
  options: TransferEngineOptions;
  binding: NativeBinding;
  /** undefined in P2P mode. The facade owns (and closes) it. */
  store: MetadataStore | undefined;
  /** The address published for peers. */
  advertise: string;
  /** Received notifies go here. */
  notifications: NotificationQueue;
  onCompletions: CompletionCallback;
  /** A background metadata operation failed. */
  onMetadataError: (err: MooncakeError) => void;
}

export interface Backend {
  readonly kind: 'builtin' | 'mooncake';
  readonly native: NativeEngine;
  /** This engine's segment name. */
  readonly name: string;
  readonly protocol: string;
  /** The handshake port; 0 when unknown. */
  readonly rpcPort: number;
  /** backend 'mooncake': what it loaded. */
  readonly upstream?: UpstreamBackendInfo;
  /** Where peer `name` is, for the native engine's openSegment. */
  locate(name: string): Promise<ResolvedSegment>;
  /** Republishes this engine's descriptor after its memory changed (no-op when the backend publishes its own). */
  publish(): Promise<void>;
  sendNotify(segment: Segment, notify: Notify): Promise<void>;
  /** The control plane's counters, for stats(). */
  counters(): Record<string, number>;
  /** The handshake daemon's, for the metrics; undefined when the backend runs none of its own. */
  handshakeStats(): HandshakeServerStats | undefined;
  ref(): void;
  unref(): void;
  /** Stops the native engine: pending transfers complete with CLOSED. */
  stop(): Promise<void>;
  /** Then closes what the backend runs beside it (handshake daemon, publisher). */
  close(): Promise<void>;
}
