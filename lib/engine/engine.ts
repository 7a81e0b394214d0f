/**
 * TransferEngine: the public facade. It owns validation, Promises, AbortSignal and the engine's
 * state (regions, segments, transfers in flight); its backend owns what differs between mooncake-node's
 * engine and upstream's (backend.ts). Bytes move in the native engine.
 */
import { EventEmitter } from 'node:events';
import { MooncakeError, isMooncakeError } from '../errors';
import { NotificationQueue, notifyBytes, type Notify, type NotifyRejectReason } from '../handshake';
import { createMetadataStore, isP2PHandshake, type MetadataStore } from '../metadata/store';
import { engineFamilies } from './metrics';
import type { MetricFamily } from '../metrics/types';
import type { Backend, BackendContext } from './backend';
import { createBuiltinBackend } from './builtin-backend';
import type { MemoryInput, MemoryRegion, RegisterOptions } from './memory';
import { loadNative, type NativeEngine } from './native';
import { Regions } from './regions';
import { defaultAdvertiseAddress, envDefaults, validateOptions, type TransferEngineOptions } from './options';
import { Segment } from './segment';
import { packRanges, packRequests, type BatchRequest, type Opcode, type PackedRequests, type Ranges, type TransferRequest } from './transfer-batch';
import { TransferTable, type TransferOptions, type TransferResult } from './transfers';
import { createUpstreamBackend, type UpstreamBackendInfo } from './upstream-backend';

export type { TransferEngineOptions } from './options';
export type { TransferRequest, BatchRequest, Opcode } from './transfer-batch';
export type { TransferOptions, TransferResult } from './transfers';
export type { Notify } from '../handshake';

/** A received notify that did not make it into (or out of) the `getNotifies()` buffer. */
export interface NotifyDropInfo {
  /**
   * 'overflow': discarded from the full buffer to make room (it was emitted as 'notify' first);
   * 'too-large' / 'full' / 'closed' / 'refused' (by the handler that claimed its name, claimNotifies):
   * refused, and the sender was told (its `sendNotify` failed).
   */
  reason: 'overflow' | NotifyRejectReason;
  name: string;
  /** UTF-8 bytes of name + message. */
  bytes: number;
}

export interface TransferEngineEvents {
  /** A notification from a peer (upstream's notify messages). */
  notify: [notify: Notify];
  /** A notify was dropped from the buffer or refused (counted in stats() `notifiesDropped` / `notifiesRejected`). */
  notifyDropped: [info: NotifyDropInfo];
  /** A background metadata operation failed (the engine keeps retrying). */
  metadataError: [error: MooncakeError];
}

const PACKED = Symbol('packed');
/** Submits packed requests: throws (with the request's index) when one is invalid, else a Promise. */
export const SUBMIT_PACKED = Symbol('submitPacked');

/** A batch validated and packed once by `prepareBatch`. */
export interface PreparedBatch {
  readonly segment: Segment;
  readonly opcode: Opcode;
  readonly requests: number;
  readonly bytes: number;
  /** @internal */
  readonly [PACKED]: PackedRequests;
}

const BACKENDS: Record<'builtin' | 'mooncake', (ctx: BackendContext) => Promise<Backend>> = {
  builtin: createBuiltinBackend,
  mooncake: createUpstreamBackend,
};

export class TransferEngine extends EventEmitter<TransferEngineEvents> implements AsyncDisposable {
  readonly localServerName: string;
  readonly metadataServer: string;
  /** Address published for peers. */
  readonly advertiseAddress: string;
  readonly rpcPort: number;
  readonly dataPort: number;
  /** The data-plane protocol ('tcp' for the built-in backend). */
  readonly protocol: string;
  readonly backend: 'builtin' | 'mooncake';
  /** backend 'mooncake': which library was loaded, from which wheel, and its Ascend transport's state. */
  readonly upstream: UpstreamBackendInfo | undefined;

  private readonly impl: Backend;
  private readonly native: NativeEngine;
  private readonly regions: Regions;
  private readonly segments = new Map<string, Segment>();
  private readonly opening = new Map<string, Promise<Segment>>();
  private closing: Promise<void> | undefined;

  private constructor(
    impl: Backend,
    private readonly transfers: TransferTable,
    private readonly notifications: NotificationQueue,
    private readonly store: MetadataStore | undefined,
    metadataServer: string,
    advertiseAddress: string,
  ) {
    super();
    this.impl = impl;
    this.native = impl.native;
    this.backend = impl.kind;
    this.protocol = impl.protocol;
    this.upstream = impl.upstream;
    this.localServerName = impl.name;
    this.rpcPort = impl.rpcPort;
    this.dataPort = impl.native.dataPort();
    this.metadataServer = metadataServer;
    this.advertiseAddress = advertiseAddress;
    this.regions = new Regions(this, {
      native: impl.native,
      assertOpen: () => this.assertOpen(),
      publish: () => impl.publish(),
      release: (r) => this.unregisterMemory(r),
    });
    notifications.on('notify', (n: Notify) => this.emit('notify', n));
    notifications.on('overflow', (n: Notify) => this.emit('notifyDropped', { reason: 'overflow', name: n.name, bytes: notifyBytes(n) }));
    notifications.on('reject', (r) => this.emit('notifyDropped', { reason: r.reason, name: r.name, bytes: r.bytes }));
  }

  /** Creates an engine: starts its data and handshake listeners and publishes it in the metadata store. */
  static async create(options: TransferEngineOptions): Promise<TransferEngine> {
    validateOptions(options);
    const o: TransferEngineOptions = { ...envDefaults(), ...options };
    const binding = loadNative();
    const store = isP2PHandshake(o.metadataServer) ? undefined : createMetadataStore(o.metadataServer, { timeoutMs: o.metadataTimeoutMs });
    const advertise = o.advertiseAddress ?? defaultAdvertiseAddress(o.bindAddress);
    const notifications = new NotificationQueue(o.notifies);
    const transfers = new TransferTable();
    let engine: TransferEngine | undefined;
    try {
      const impl = await BACKENDS[o.backend ?? 'builtin']({
        options: o, binding, store, advertise, notifications, onCompletions: transfers.onCompletions, onMetadataError: (err) => engine?.emit('metadataError', err),
      });
      engine = new TransferEngine(impl, transfers, notifications, store, o.metadataServer, advertise);
      return engine;
    } catch (err) {
      await store?.close().catch(() => undefined);
      throw err;
    }
  }

  // ---- memory ----------------------------------------------------------------------------------

  /**
   * Registers local memory so transfers can use it and peers can reach it. JS memory (Buffer,
   * TypedArray, ArrayBuffer, DataView) stays referenced until unregistered; `{ address, length }` is
   * memory the caller owns (e.g. device memory). The descriptor is republished before this resolves.
   */
  async registerMemory(memory: MemoryInput, options: RegisterOptions = {}): Promise<MemoryRegion> {
    return (await this.regions.register([memory], options))[0];
  }

  /** Registers several ranges with one metadata update (upstream's registerLocalMemoryBatch). */
  registerMemoryBatch(memories: MemoryInput[], options: RegisterOptions = {}): Promise<MemoryRegion[]> {
    return this.regions.register(memories, options);
  }

  /**
   * Allocates page-aligned, zeroed host memory owned by the engine and registers it. With `shareable`
   * (default true) it lives in shared memory, so a peer on the same host can copy without TCP. Sizes
   * above this machine's memory are refused (MEMORY). `region.buffer` views the memory when this Node
   * can make a Buffer that large (`buffer.constants.MAX_LENGTH`: 4 GiB on Node 20); a larger region has
   * no `buffer` but moves bytes like any other.
   */
  allocateManagedBuffer(size: number, options: RegisterOptions & { shareable?: boolean } = {}): Promise<MemoryRegion> {
    return this.regions.allocateManaged(size, options);
  }

  /**
   * Allocates device memory (`npu:N`, through the Ascend runtime loaded at run time), 2 MiB aligned,
   * and registers it. It is freed when unregistered. Host code cannot touch it: use copyToDevice /
   * copyFromDevice; transfers over the built-in TCP transport stage it through host memory.
   */
  allocateDeviceMemory(location: string, size: number): Promise<MemoryRegion> {
    return this.regions.allocateDevice(location, size);
  }

  /** Frees device memory from allocateDeviceMemory (the same as unregistering it). */
  freeDeviceMemory(region: MemoryRegion): Promise<void> {
    return this.unregisterMemory(region);
  }

  /** Copies host bytes into device memory at `offset` (off the event loop). */
  copyToDevice(region: MemoryRegion, offset: number, source: ArrayBufferView): Promise<void> {
    return this.regions.copyDevice(true, region, offset, source);
  }

  /** Copies device memory at `offset` into a host view (off the event loop). */
  copyFromDevice(region: MemoryRegion, offset: number, target: ArrayBufferView): Promise<void> {
    return this.regions.copyDevice(false, region, offset, target);
  }

  /** Unregisters a region (or the region starting at an address). REGION_BUSY while in use. */
  unregisterMemory(region: MemoryRegion | bigint): Promise<void> {
    return this.regions.unregister(region);
  }

  /** Registered regions, in registration order. */
  get memoryRegions(): MemoryRegion[] {
    return this.regions.list;
  }

  // ---- segments --------------------------------------------------------------------------------

  /**
   * Opens a peer's segment by name (its localServerName; in P2P mode `ip:rpcPort`). Cached: pass
   * `{ refresh: true }` to fetch the descriptor again (after the peer registered more memory).
   */
  async openSegment(name: string, options: { refresh?: boolean } = {}): Promise<Segment> {
    this.assertOpen();
    if (typeof name !== 'string' || name.replace(/^\/+/, '') === '') throw new MooncakeError('INVALID_ARGUMENT', 'segment name must be a non-empty string');
    const cached = this.segments.get(name);
    if (cached && !options.refresh) return cached;
    const inflight = this.opening.get(name);
    if (inflight) return inflight;
    const p = this.doOpenSegment(name).finally(() => this.opening.delete(name));
    this.opening.set(name, p);
    return p;
  }

  /** Forgets a segment; transfers already submitted to it finish normally. */
  async closeSegment(segment: Segment | string): Promise<void> {
    this.assertOpen();
    const name = typeof segment === 'string' ? segment : segment.name;
    const s = this.segments.get(name);
    if (!s) throw new MooncakeError('SEGMENT_NOT_FOUND', `segment ${name} is not open`);
    await this.native.closeSegment(s.handle);
    s.closed = true;
    this.segments.delete(name);
  }

  // ---- transfers -------------------------------------------------------------------------------

  /** Writes local memory into the peer's memory, as one batch. */
  write(segment: Segment, requests: readonly TransferRequest[], options?: TransferOptions): Promise<TransferResult> {
    return this.runOnSegment(segment, () => packRequests(this, requests, { opcode: 'write', segment }), options);
  }

  /** Reads the peer's memory into local memory, as one batch. */
  read(segment: Segment, requests: readonly TransferRequest[], options?: TransferOptions): Promise<TransferResult> {
    return this.runOnSegment(segment, () => packRequests(this, requests, { opcode: 'read', segment }), options);
  }

  /**
   * Validates and packs a batch once, for batches submitted again and again (KV block tables,
   * benchmarks): `submitPrepared` then costs no per-request JavaScript work.
   */
  prepareBatch(segment: Segment, opcode: Opcode, requests: readonly TransferRequest[]): PreparedBatch {
    this.assertOpen();
    this.checkSegment(segment);
    const packed = packRequests(this, requests, { opcode, segment });
    return { segment, opcode, requests: requests.length, bytes: packed.bytes, [PACKED]: packed };
  }

  /** Submits a prepared batch (see prepareBatch). */
  async submitPrepared(batch: PreparedBatch, options?: TransferOptions): Promise<TransferResult> {
    this.assertOpen();
    const packed = batch[PACKED];
    if (!packed || batch.segment.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'not a batch prepared by this engine');
    return this.runOnSegment(batch.segment, () => packed, options);
  }

  /** A batch mixing directions and segments. */
  transferBatch(requests: readonly BatchRequest[], options?: TransferOptions): Promise<TransferResult> {
    try {
      this.assertOpen();
      return this.transfers.submit(this.native, packRequests(this, requests), options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * One batch of absolute address ranges, already in typed arrays (the KV layer's plans): no object per
   * range and no per-range JavaScript validation; the native engine still checks every range against
   * the registered memory and the segment's buffers, and names the offending index.
   * @internal
   */
  transferRanges(segment: Segment, opcode: Opcode, ranges: Ranges, options?: TransferOptions): Promise<TransferResult> {
    return this.runOnSegment(segment, () => packRanges(segment, opcode, ranges), options);
  }

  /** For the compat module's polled batches. */
  [SUBMIT_PACKED](packed: PackedRequests): Promise<TransferResult> {
    this.assertOpen();
    return this.transfers.submit(this.native, packed);
  }

  // ---- notifications ---------------------------------------------------------------------------

  /** Sends upstream's notify message to a peer (`sendNotifyByName`). */
  async sendNotify(target: Segment | string, notify: Notify): Promise<void> {
    this.assertOpen();
    await this.impl.sendNotify(typeof target === 'string' ? await this.openSegment(target) : target, notify);
  }

  /** Notifications as an async iterator (ends when the engine closes). */
  notifies(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<Notify> {
    return this.notifications.iterate(options);
  }

  /**
   * Notifies named `name` are handed to `handler` instead of the `getNotifies()` buffer: the messages of a
   * layer that consumes its own (the KV layer claims `mooncake-node/kv/1`). `handler` returns false to
   * refuse one (the sender's `sendNotify` fails; counted in `notifiesRejected`, a 'notifyDropped' event
   * with reason 'refused'). Accepted ones are still emitted as 'notify'. One handler per name
   * (INVALID_ARGUMENT otherwise); returns the function that ends the claim.
   */
  claimNotifies(name: string, handler: (notify: Notify) => boolean): () => void {
    this.assertOpen();
    return this.notifications.claim(name, handler);
  }

  /** Drains received notifications (upstream's getNotifies). */
  getNotifies(): Notify[] {
    return this.notifications.drain();
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** This engine's segment descriptor, exactly as published ('' for the mooncake backend: upstream publishes its own). */
  describe(): string {
    return this.native.localDescriptor();
  }

  /** Counters of the data plane and the control plane. */
  stats(): Record<string, number> {
    if (this.closing) return { closed: 1 };
    return {
      ...this.native.stats(),
      pendingTransfers: this.transfers.size,
      openSegments: this.segments.size,
      ...this.impl.counters(),
      notifiesReceived: this.notifications.received,
      notifiesQueued: this.notifications.size,
      notifiesQueuedBytes: this.notifications.bytes,
      notifiesDropped: this.notifications.dropped,
      notifiesRejected: this.notifications.rejected,
    };
  }

  /**
   * The engine's metrics, for a `MetricsRegistry` (docs/metrics.md): per-peer bytes, requests and
   * failures and the transfer latency histogram (counted natively, read in one call), connections,
   * notifies and the handshake port. A closed engine reports no samples.
   */
  collectMetrics(): MetricFamily[] {
    if (this.closing) return engineFamilies({ engine: this.localServerName, stats: {} });
    return engineFamilies({ engine: this.localServerName, native: this.native.metrics(), stats: this.stats(), handshake: this.impl.handshakeStats() });
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Lets the process exit while the engine is open and idle (like net.Server#unref). */
  unref(): this {
    this.impl.unref();
    return this;
  }

  ref(): this {
    this.impl.ref();
    return this;
  }

  /**
   * Closes the engine: pending transfers reject with CLOSED, threads stop, listeners close and the
   * metadata entries are deleted. Idempotent.
   */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.shutdown();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---- internals -------------------------------------------------------------------------------

  private async shutdown(): Promise<void> {
    await this.impl.stop(); // joins the engine threads; pending Promises are rejected with CLOSED
    for (const s of this.segments.values()) s.closed = true;
    this.regions.releaseAll();
    this.segments.clear();
    this.notifications.close();
    await this.impl.close();
    await this.store?.close();
  }

  private assertOpen(): void {
    if (this.closing) throw new MooncakeError('CLOSED', 'the engine is closed');
  }

  private checkSegment(segment: Segment): void {
    if (!(segment instanceof Segment) || segment.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'segment must be a Segment opened by this engine');
  }

  /** Runs a batch on one segment; when the peer refuses an address, reads its descriptor again, once. */
  private async runOnSegment(segment: Segment, pack: () => PackedRequests, options?: TransferOptions): Promise<TransferResult> {
    this.assertOpen();
    this.checkSegment(segment);
    try {
      return await this.transfers.submit(this.native, pack(), options);
    } catch (err) {
      // The peer may have registered more memory since we read its descriptor: look again, once.
      if (!isMooncakeError(err, 'INVALID_REMOTE_ADDRESS') || segment.closed || this.closing) throw err;
      await this.openSegment(segment.name, { refresh: true });
      return this.transfers.submit(this.native, pack(), options);
    }
  }

  private async doOpenSegment(name: string): Promise<Segment> {
    const r = await this.impl.locate(name);
    this.assertOpen();
    const info = await this.native.openSegment(name, r.descriptor, r.ip);
    const state = {
      handle: info.id,
      buffers: info.buffers,
      protocol: info.protocol,
      protoVersion: info.protoVersion >= 2 ? 2 : 1,
      ip: info.ip,
      dataPort: info.dataPort,
      rpcPort: r.rpcPort,
    };
    let seg = this.segments.get(name);
    if (seg) {
      seg.refresh(state);
    } else {
      seg = new Segment(this, name, state);
      this.segments.set(name, seg);
    }
    return seg;
  }
}
