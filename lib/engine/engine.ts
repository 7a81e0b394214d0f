/**
 * TransferEngine: the public facade. It owns validation, Promises, AbortSignal, metadata publication
 * and the handshake daemon (control plane, TypeScript); bytes move in the native engine (data plane).
 */
import { constants as bufferConstants } from 'node:buffer';
import { EventEmitter, addAbortListener } from 'node:events';
import * as dns from 'node:dns';
import * as net from 'node:net';
import { MooncakeError, codeForStatus, isMooncakeError } from '../errors';
import { MemoryRegion, type RegisterOptions } from './memory';
import { MetadataPublisher } from '../metadata/publisher';
import { createMetadataStore, isP2PHandshake, type MetadataStore } from '../metadata/store';
import { rpcMetaKey, segmentKey } from '../metadata/keys';
import { decodeRpcMeta, encodeRpcMeta } from '../metadata/rpc-meta';
import { loadNative, type NativeBinding, type NativeEngine } from './native';
import { engineFamilies } from '../metrics/engine';
import type { MetricFamily } from '../metrics/types';
import { createUpstreamNative, pollUpstreamNotifies, type UpstreamBackendInfo } from './upstream-backend';
import {
  defaultAdvertiseAddress,
  defaultIoThreads,
  envDefaults,
  portRange,
  validateOptions,
  type TransferEngineOptions,
} from './options';
import { Segment } from './segment';
import { packRequests, type BatchRequest, type Opcode, type PackedRequests, type TransferRequest } from './transfer-batch';
import { HandshakeServer, HandshakeType, NotificationQueue, RawJson, exchange, notifyBytes, probe, sendNotify, type Notify, type NotifyRejectReason } from '../handshake';

export type { TransferEngineOptions } from './options';
export type { TransferRequest, BatchRequest, Opcode } from './transfer-batch';
export type { Notify } from '../handshake';

export interface TransferOptions {
  /** Cancels the transfer. The Promise settles once the engine no longer touches the memory. */
  signal?: AbortSignal;
  /** Fails the transfer with TIMEOUT after this many milliseconds. */
  timeoutMs?: number;
}

export interface TransferResult {
  /** Bytes moved. */
  bytes: number;
  /** Requests in the batch. */
  requests: number;
}

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
const DEVICE_ALIGNMENT = 2n * 1024n * 1024n;

/** A batch validated and packed once by `prepareBatch`. */
export interface PreparedBatch {
  readonly segment: Segment;
  readonly opcode: Opcode;
  readonly requests: number;
  readonly bytes: number;
  /** @internal */
  readonly [PACKED]: PackedRequests;
}

interface Pending {
  resolve: (r: TransferResult) => void;
  reject: (e: unknown) => void;
  requests: number;
  signal?: AbortSignal;
  dispose?: Disposable;
}

interface ResolvedSegment {
  descriptor: string;
  ip: string;
  rpcPort: number;
}

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

  private readonly native: NativeEngine;
  /** The handshake daemon (built-in backend; upstream runs its own). */
  private readonly handshake: HandshakeServer | undefined;
  private notifyTimer: NodeJS.Timeout | undefined;
  private readonly notifications: NotificationQueue;
  private readonly store: MetadataStore | undefined;
  private publisher: MetadataPublisher | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly regions = new Map<bigint, MemoryRegion>();
  private readonly segments = new Map<string, Segment>();
  private readonly opening = new Map<string, Promise<Segment>>();
  private nextToken = 1;
  private closing: Promise<void> | undefined;

  private constructor(init: {
    native: NativeEngine;
    backend: 'builtin' | 'mooncake';
    protocol: string;
    handshake: HandshakeServer | undefined;
    notifications: NotificationQueue;
    store: MetadataStore | undefined;
    name: string;
    metadataServer: string;
    advertiseAddress: string;
    rpcPort: number;
    upstream?: UpstreamBackendInfo;
  }) {
    super();
    this.native = init.native;
    this.upstream = init.upstream;
    this.backend = init.backend;
    this.protocol = init.protocol;
    this.handshake = init.handshake;
    this.notifications = init.notifications;
    this.store = init.store;
    this.localServerName = init.name;
    this.metadataServer = init.metadataServer;
    this.advertiseAddress = init.advertiseAddress;
    this.rpcPort = init.rpcPort;
    this.dataPort = init.native.dataPort();
    this.notifications.on('notify', (n: Notify) => this.emit('notify', n));
    this.notifications.on('overflow', (n: Notify) => this.emit('notifyDropped', { reason: 'overflow', name: n.name, bytes: notifyBytes(n) }));
    this.notifications.on('reject', (r) => this.emit('notifyDropped', { reason: r.reason, name: r.name, bytes: r.bytes }));
  }

  /** Creates an engine: starts its data and handshake listeners and publishes it in the metadata store. */
  static async create(options: TransferEngineOptions): Promise<TransferEngine> {
    validateOptions(options);
    const o: TransferEngineOptions = { ...envDefaults(), ...options };
    const binding = loadNative();
    const p2p = isP2PHandshake(o.metadataServer);
    const store = p2p ? undefined : createMetadataStore(o.metadataServer, { timeoutMs: o.metadataTimeoutMs });
    const range = portRange();
    const advertise = o.advertiseAddress ?? defaultAdvertiseAddress(o.bindAddress);
    const notifications = new NotificationQueue(o.notifies);
    if (o.backend === 'mooncake') return TransferEngine.createUpstream(binding, o, store, advertise, notifications);

    let engine: TransferEngine | undefined;
    const handshake = new HandshakeServer({
      onMetadata: () => (engine ? new RawJson(engine.describe()) : null),
      // Acknowledged only when accepted: a refused notify fails the sender's sendNotify.
      onNotify: (n: Notify) => notifications.push(n),
      ...(o.firstByteTimeoutMs !== undefined ? { firstByteTimeoutMs: o.firstByteTimeoutMs } : {}),
      // A peer the data port refuses gets neither the descriptor nor a say through notifies.
      ...(o.allowedPeers !== undefined ? { allowedPeers: o.allowedPeers } : {}),
    });
    let native: NativeEngine | undefined;
    try {
      const rpcPort = await handshake.listen({ host: o.bindAddress, port: o.rpcPort, portRange: range });
      // Upstream rewrites the name to ip:rpc_port in P2P mode; the default name has that form anyway.
      const name = p2p || o.localServerName === undefined ? `${formatHost(advertise)}:${rpcPort}` : o.localServerName;
      let self: TransferEngine | undefined;
      native = new binding.Engine(
        {
          localServerName: name,
          ioThreads: o.ioThreads ?? defaultIoThreads(),
          connectionsPerPeer: o.connectionsPerPeer,
          sliceSize: o.sliceSize,
          maxInflightPerConnection: o.maxInflightPerConnection,
          idleTimeoutMs: o.idleTimeoutMs,
          connectTimeoutMs: o.connectTimeoutMs,
          bindAddress: o.bindAddress ?? '',
          advertiseAddress: advertise,
          dataPort: o.dataPort ?? 0,
          minPort: range.min,
          maxPort: range.max,
          maxServerConnections: o.maxServerConnections,
          maxServerConnectionsPerPeer: o.maxServerConnectionsPerPeer,
          firstByteTimeoutMs: o.firstByteTimeoutMs,
          tcpProtoVersion: o.tcpProtoVersion,
          allowedPeers: o.allowedPeers,
          sameHostFastPath: o.sameHostFastPath,
          ascendRuntimeLibrary: o.ascendRuntimeLibrary,
          metricsMaxPeers: o.metricsMaxPeers,
        },
        (tokens, codes, bytes, details) => self?.onCompletions(tokens, codes, bytes, details),
      );
      await native.start();
      engine = self = new TransferEngine({
        native, backend: 'builtin', protocol: 'tcp', handshake, notifications, store, name, metadataServer: o.metadataServer, advertiseAddress: advertise, rpcPort,
      });
      if (store) {
        const rpcMeta = encodeRpcMeta({ ipOrHostName: advertise, rpcPort });
        const owner = engine;
        engine.publisher = new MetadataPublisher({
          store,
          name,
          rpcMeta,
          describe: () => owner.describe(),
          refreshMs: o.metadataRefreshMs ?? 5000,
          ttlMs: o.metadataTtlMs,
          isStale: (existing) => staleRpcMeta(existing),
          onError: (err) => owner.emit('metadataError', err),
        });
        await engine.publisher.start();
      }
      return engine;
    } catch (err) {
      await native?.close();
      await handshake.close().catch(() => undefined);
      await store?.close().catch(() => undefined);
      throw err;
    }
  }

  /** backend 'mooncake': upstream publishes its metadata and runs its own handshake daemon. */
  private static async createUpstream(binding: NativeBinding, o: TransferEngineOptions, store: MetadataStore | undefined, advertise: string, notifications: NotificationQueue): Promise<TransferEngine> {
    let self: TransferEngine | undefined;
    try {
      const up = await createUpstreamNative(binding, o, advertise, (tokens, codes, bytes, details) => self?.onCompletions(tokens, codes, bytes, details));
      self = new TransferEngine({
        native: up.native, backend: 'mooncake', protocol: o.protocol ?? 'tcp', handshake: undefined, notifications, store,
        name: up.name, metadataServer: o.metadataServer, advertiseAddress: advertise, rpcPort: up.rpcPort, upstream: up.info,
      });
      self.notifyTimer = pollUpstreamNotifies(up.native, notifications);
      return self;
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
  async registerMemory(memory: ArrayBuffer | ArrayBufferView | { address: bigint; length: number }, options: RegisterOptions = {}): Promise<MemoryRegion> {
    return (await this.adopt([await this.registerOne(memory, options)]))[0];
  }

  /** Registers several ranges with one metadata update (upstream's registerLocalMemoryBatch). */
  async registerMemoryBatch(memories: (ArrayBuffer | ArrayBufferView | { address: bigint; length: number })[], options: RegisterOptions = {}): Promise<MemoryRegion[]> {
    const done: MemoryRegion[] = [];
    try {
      for (const m of memories) done.push(await this.registerOne(m, options));
    } catch (err) {
      for (const r of done) await this.dropRegion(r);
      throw err;
    }
    return this.adopt(done);
  }

  /**
   * Takes newly registered regions into the engine and republishes the descriptor; if that fails they
   * are unregistered again, so a registration either is published or did not happen.
   */
  private async adopt(regions: MemoryRegion[]): Promise<MemoryRegion[]> {
    for (const r of regions) this.regions.set(r.address, r);
    try {
      await this.publishDescriptor();
    } catch (err) {
      for (const r of regions) await this.dropRegion(r);
      throw err;
    }
    return regions;
  }

  /**
   * Allocates page-aligned, zeroed host memory owned by the engine and registers it. With `shareable`
   * (default true) it lives in shared memory, so a peer on the same host can copy without TCP. Sizes
   * above this machine's memory are refused (MEMORY). `region.buffer` views the memory when this Node
   * can make a Buffer that large (`buffer.constants.MAX_LENGTH`: 4 GiB on Node 20); a larger region has
   * no `buffer` but moves bytes like any other.
   */
  async allocateManagedBuffer(size: number, options: RegisterOptions & { shareable?: boolean } = {}): Promise<MemoryRegion> {
    this.assertOpen();
    if (!Number.isSafeInteger(size) || size <= 0) throw new MooncakeError('INVALID_ARGUMENT', `size must be a positive safe integer, got ${String(size)}`);
    const location = options.location ?? 'cpu:0';
    const shareable = options.shareable ?? true;
    const m = await this.native.allocateManaged(size, shareable, location);
    const view = m.buffer !== undefined && m.buffer.byteLength <= bufferConstants.MAX_LENGTH ? Buffer.from(m.buffer) : undefined;
    return (await this.adopt([new MemoryRegion(this, m.address, size, location, view, undefined, (r) => this.unregisterMemory(r))]))[0];
  }

  /**
   * Allocates device memory (`npu:N`, through the Ascend runtime loaded at run time), 2 MiB aligned,
   * and registers it. It is freed when unregistered. Host code cannot touch it: use copyToDevice /
   * copyFromDevice; transfers over the built-in TCP transport stage it through host memory.
   */
  async allocateDeviceMemory(location: string, size: number): Promise<MemoryRegion> {
    this.assertOpen();
    if (typeof location !== 'string' || !/^npu:\d+$/.test(location)) throw new MooncakeError('INVALID_ARGUMENT', `device location must look like 'npu:0', got '${String(location)}'`);
    if (!Number.isSafeInteger(size) || size <= 0) throw new MooncakeError('INVALID_ARGUMENT', `size must be a positive safe integer, got ${String(size)}`);
    const m = await this.native.allocateDevice(location, size);
    return (await this.adopt([new MemoryRegion(this, m.address, size, location, undefined, undefined, (r) => this.unregisterMemory(r))]))[0];
  }

  /** Frees device memory from allocateDeviceMemory (the same as unregistering it). */
  freeDeviceMemory(region: MemoryRegion): Promise<void> {
    return this.unregisterMemory(region);
  }

  /** Copies host bytes into device memory at `offset` (off the event loop). */
  copyToDevice(region: MemoryRegion, offset: number, source: ArrayBufferView): Promise<void> {
    return this.copyDevice(true, region, offset, source);
  }

  /** Copies device memory at `offset` into a host view (off the event loop). */
  copyFromDevice(region: MemoryRegion, offset: number, target: ArrayBufferView): Promise<void> {
    return this.copyDevice(false, region, offset, target);
  }

  private async copyDevice(toDevice: boolean, region: MemoryRegion, offset: number, host: ArrayBufferView): Promise<void> {
    this.assertOpen();
    if (!(region instanceof MemoryRegion) || region.owner !== this || region.device === undefined) {
      throw new MooncakeError('INVALID_ARGUMENT', 'region must be device memory registered with this engine');
    }
    if (region.unregistered) throw new MooncakeError('INVALID_ARGUMENT', 'the region was unregistered');
    if (!ArrayBuffer.isView(host)) throw new MooncakeError('INVALID_ARGUMENT', 'host memory must be a Buffer, TypedArray or DataView');
    await this.native.copyDevice(toDevice, region.at(offset, host.byteLength), host);
  }

  /** Unregisters a region (or the region starting at an address). REGION_BUSY while in use. */
  async unregisterMemory(region: MemoryRegion | bigint): Promise<void> {
    this.assertOpen();
    const address = typeof region === 'bigint' ? region : region.address;
    if (region instanceof MemoryRegion && region.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'the region belongs to another engine');
    await this.native.unregister(address);
    const r = this.regions.get(address);
    this.regions.delete(address);
    r?.markReleased();
    await this.publishDescriptor();
  }

  /** Registered regions, in registration order. */
  get memoryRegions(): MemoryRegion[] {
    return [...this.regions.values()];
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
    return this.transfer(segment, 'write', requests, options);
  }

  /** Reads the peer's memory into local memory, as one batch. */
  read(segment: Segment, requests: readonly TransferRequest[], options?: TransferOptions): Promise<TransferResult> {
    return this.transfer(segment, 'read', requests, options);
  }

  /**
   * Validates and packs a batch once, for batches submitted again and again (KV block tables,
   * benchmarks): `submitPrepared` then costs no per-request JavaScript work.
   */
  prepareBatch(segment: Segment, opcode: Opcode, requests: readonly TransferRequest[]): PreparedBatch {
    this.assertOpen();
    if (!(segment instanceof Segment) || segment.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'segment must be a Segment opened by this engine');
    const packed = packRequests(this, requests, { opcode, segment });
    return { segment, opcode, requests: requests.length, bytes: packed.bytes, [PACKED]: packed };
  }

  /** Submits a prepared batch (see prepareBatch). */
  async submitPrepared(batch: PreparedBatch, options?: TransferOptions): Promise<TransferResult> {
    this.assertOpen();
    const packed = batch[PACKED];
    if (!packed || batch.segment.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'not a batch prepared by this engine');
    try {
      return await this.run(packed, options);
    } catch (err) {
      if (!isMooncakeError(err, 'INVALID_REMOTE_ADDRESS') || batch.segment.closed || !this.canRefresh()) throw err;
      await this.openSegment(batch.segment.name, { refresh: true });
      return this.run(packed, options);
    }
  }

  /** A batch mixing directions and segments. */
  transferBatch(requests: readonly BatchRequest[], options?: TransferOptions): Promise<TransferResult> {
    try {
      this.assertOpen();
      return this.run(packRequests(this, requests), options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private transfer(segment: Segment, opcode: 'read' | 'write', requests: readonly TransferRequest[], options?: TransferOptions): Promise<TransferResult> {
    return this.runOnSegment(segment, () => packRequests(this, requests, { opcode, segment }), options);
  }

  /**
   * One batch of absolute address ranges, already in typed arrays (the KV layer's plans): no object per
   * range and no per-range JavaScript validation; the native engine still checks every range against
   * the registered memory and the segment's buffers, and names the offending index.
   * @internal
   */
  transferRanges(segment: Segment, opcode: Opcode, ranges: { locals: BigUint64Array; remotes: BigUint64Array; lengths: Float64Array; bytes: number }, options?: TransferOptions): Promise<TransferResult> {
    return this.runOnSegment(segment, () => {
      const n = ranges.lengths.length;
      if (n === 0) throw new MooncakeError('INVALID_ARGUMENT', 'requests is empty');
      if (ranges.locals.length !== n || ranges.remotes.length !== n) throw new MooncakeError('INVALID_ARGUMENT', 'locals, remotes and lengths differ in length');
      if (segment.closed) throw new MooncakeError('SEGMENT_NOT_FOUND', `segment ${segment.name} was closed`);
      const opcodes = new Uint8Array(n);
      if (opcode === 'write') opcodes.fill(1);
      else if (opcode !== 'read') throw new MooncakeError('INVALID_ARGUMENT', "opcode must be 'read' or 'write'");
      return { opcodes, segments: new Int32Array(n).fill(segment.handle), locals: ranges.locals, remotes: ranges.remotes, lengths: ranges.lengths, bytes: ranges.bytes };
    }, options);
  }

  private async runOnSegment(segment: Segment, pack: () => PackedRequests, options?: TransferOptions): Promise<TransferResult> {
    this.assertOpen();
    if (!(segment instanceof Segment) || segment.owner !== this) throw new MooncakeError('INVALID_ARGUMENT', 'segment must be a Segment opened by this engine');
    try {
      return await this.run(pack(), options);
    } catch (err) {
      // The peer may have registered more memory since we read its descriptor: look again, once.
      if (!isMooncakeError(err, 'INVALID_REMOTE_ADDRESS') || segment.closed || !this.canRefresh()) throw err;
      await this.openSegment(segment.name, { refresh: true });
      return this.run(pack(), options);
    }
  }

  /** For the compat module's polled batches. */
  [SUBMIT_PACKED](packed: PackedRequests): Promise<TransferResult> {
    this.assertOpen();
    return this.run(packed);
  }

  private run(packed: PackedRequests, options: TransferOptions = {}): Promise<TransferResult> {
    const { signal, timeoutMs } = options;
    if (timeoutMs !== undefined && (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0)) {
      return Promise.reject(new MooncakeError('INVALID_ARGUMENT', 'timeoutMs must be a positive integer'));
    }
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const token = this.nextToken++;
    // Throws synchronously (with the offending index) when a request is invalid: nothing started.
    this.native.submit(token, packed.opcodes, packed.segments, packed.locals, packed.remotes, packed.lengths, timeoutMs ?? 0);
    return new Promise<TransferResult>((resolve, reject) => {
      const p: Pending = { resolve, reject, requests: packed.opcodes.length, signal };
      if (signal) p.dispose = addAbortListener(signal, () => this.native.cancel(token, 'abort'));
      this.pending.set(token, p);
    });
  }

  private onCompletions(tokens: Float64Array, codes: Int32Array, bytes: Float64Array, details: (Int32Array | undefined)[]): void {
    for (let i = 0; i < tokens.length; i++) {
      const p = this.pending.get(tokens[i]);
      if (!p) continue;
      this.pending.delete(tokens[i]);
      p.dispose?.[Symbol.dispose]();
      const code = codes[i];
      if (code === 0) {
        p.resolve({ bytes: bytes[i], requests: p.requests });
        continue;
      }
      const perTask = details[i];
      const failures = perTask ? Array.from(perTask, (c) => codeForStatus(c)) : undefined;
      const failed = failures ? failures.filter((f) => f !== undefined).length : p.requests;
      const err = MooncakeError.fromStatus(code, undefined, { failures, cause: code === 1001 ? p.signal?.reason : undefined });
      const message = `${failed} of ${p.requests} request${p.requests === 1 ? '' : 's'} failed: ${err.message} (${err.code})`;
      p.reject(new MooncakeError(err.code, message, { failures, cause: err.cause }));
    }
  }

  // ---- notifications ---------------------------------------------------------------------------

  /** Sends upstream's notify message to a peer (`sendNotifyByName`). */
  async sendNotify(target: Segment | string, notify: Notify): Promise<void> {
    this.assertOpen();
    const seg = typeof target === 'string' ? await this.openSegment(target) : target;
    if (this.backend === 'mooncake') {
      await this.native.sendNotify(seg.handle, notify.name, notify.msg);
      return;
    }
    if (!seg.rpcPort) throw new MooncakeError('SEGMENT_NOT_FOUND', `no handshake port known for ${seg.name}`);
    await sendNotify(seg.ip, seg.rpcPort, notify);
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

  /** This engine's segment descriptor, exactly as published. */
  describe(): string {
    return this.native.localDescriptor(); // '' for the mooncake backend: upstream publishes its own
  }

  /** Counters of the data plane and the control plane. */
  stats(): Record<string, number> {
    if (this.closing) return { closed: 1 };
    return {
      ...this.native.stats(),
      pendingTransfers: this.pending.size,
      openSegments: this.segments.size,
      metadataRepublished: this.publisher?.republished ?? 0,
      ...(this.handshake ? handshakeCounters(this.handshake) : {}),
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
    return engineFamilies({ engine: this.localServerName, native: this.native.metrics(), stats: this.stats(), handshake: this.handshake?.stats() });
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Lets the process exit while the engine is open and idle (like net.Server#unref). */
  unref(): this {
    this.handshake?.unref();
    return this;
  }

  ref(): this {
    this.handshake?.ref();
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

  private async shutdown(): Promise<void> {
    // Joins the engine threads; pending Promises are rejected with CLOSED. Upstream's shutdown talks to
    // its metadata store, so that backend stops on a pool thread.
    if (this.notifyTimer) clearInterval(this.notifyTimer);
    await this.native.close();
    for (const s of this.segments.values()) s.closed = true;
    for (const r of this.regions.values()) r.markReleased();
    this.segments.clear();
    this.regions.clear();
    this.notifications.close();
    if (this.notifyTimer) clearInterval(this.notifyTimer);
    await this.handshake?.close();
    await this.publisher?.stop();
    await this.store?.close();
  }

  // ---- internals -------------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closing) throw new MooncakeError('CLOSED', 'the engine is closed');
  }

  private canRefresh(): boolean {
    return this.closing === undefined;
  }

  private async registerOne(memory: ArrayBuffer | ArrayBufferView | { address: bigint; length: number }, options: RegisterOptions): Promise<MemoryRegion> {
    this.assertOpen();
    const location = options.location ?? 'cpu:0';
    const remote = options.remoteAccessible ?? true;
    if (typeof location !== 'string' || location === '') throw new MooncakeError('INVALID_ARGUMENT', 'location must be a non-empty string');
    if (/^npu:/.test(location)) {
      // Ascend transports need 2 MiB-aligned device regions (allocateDeviceMemory guarantees it).
      const a = memory !== null && typeof memory === 'object' && 'address' in memory ? (memory as { address: unknown }).address : undefined;
      if (typeof a !== 'bigint') throw new MooncakeError('INVALID_ARGUMENT', 'npu memory is registered as { address, length } (or allocated with allocateDeviceMemory)');
      if (a % DEVICE_ALIGNMENT !== 0n) throw new MooncakeError('INVALID_ARGUMENT', `npu memory must start on a 2 MiB boundary (0x${a.toString(16)} does not)`);
    }
    const release = (x: MemoryRegion) => this.unregisterMemory(x);
    if (memory instanceof ArrayBuffer || ArrayBuffer.isView(memory)) {
      const address = await this.native.registerBuffer(memory, location, remote);
      const buffer = ArrayBuffer.isView(memory) ? Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength) : Buffer.from(memory);
      return new MemoryRegion(this, address, buffer.length, location, buffer, memory, release);
    }
    if (memory !== null && typeof memory === 'object' && typeof (memory as { address?: unknown }).address === 'bigint') {
      const { address, length } = memory as { address: bigint; length: number };
      if (!Number.isSafeInteger(length) || length <= 0) throw new MooncakeError('INVALID_ARGUMENT', 'length must be a positive safe integer');
      await this.native.registerAddress(address, length, location, remote);
      return new MemoryRegion(this, address, length, location, undefined, undefined, release);
    }
    throw new MooncakeError('INVALID_ARGUMENT', 'memory must be a Buffer, TypedArray, ArrayBuffer, DataView or { address: bigint, length }');
  }

  private async dropRegion(region: MemoryRegion): Promise<void> {
    try {
      await this.native.unregister(region.address);
    } catch {
      /* already gone */
    }
    this.regions.delete(region.address);
    region.markReleased();
  }

  private async publishDescriptor(): Promise<void> {
    await this.publisher?.publish();
  }

  private async doOpenSegment(name: string): Promise<Segment> {
    // Upstream opens segments itself; we still read the descriptor (best effort) to know the buffers.
    const r = this.backend === 'mooncake'
      ? await this.resolveSegment(name).catch(() => ({ descriptor: '', ip: '', rpcPort: 0 }))
      : await this.resolveSegment(name);
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

  private async resolveSegment(name: string): Promise<ResolvedSegment> {
    if (!this.store) {
      // P2P: the name is the peer's ip:rpc_port; it hands us its descriptor over the handshake port.
      const { host, port } = splitHostPort(name);
      const ip = await lookupIp(host);
      const reply = await exchange(ip, port, HandshakeType.Metadata, new RawJson(this.describe() || '{}'));
      if (reply.value === null) {
        throw new MooncakeError('SEGMENT_NOT_FOUND', `${name} answered the P2P handshake without a descriptor (is it in P2PHANDSHAKE mode?)`, { details: { name } });
      }
      const dataHost = descriptorField(reply.text, 'tcp_data_host', name);
      return { descriptor: reply.text, ip: typeof dataHost === 'string' && dataHost ? await lookupIp(dataHost) : ip, rpcPort: port };
    }
    const key = segmentKey(name);
    const descriptor = await this.store.get(key);
    if (descriptor === undefined) throw new MooncakeError('SEGMENT_NOT_FOUND', `no segment named '${name}' in ${this.store.url} (key ${key})`, { details: { name, key } });
    const peerName = descriptorField(descriptor, 'name', name);
    if (typeof peerName !== 'string' || peerName === '') throw new MooncakeError('MALFORMED_JSON', `the descriptor of '${name}' has no name`, { details: { name, key } });
    const rkey = rpcMetaKey(peerName);
    const rpcText = await this.store.get(rkey);
    if (rpcText === undefined) throw new MooncakeError('SEGMENT_NOT_FOUND', `segment '${name}' has no rpc_meta entry (key ${rkey})`, { details: { name, key: rkey } });
    const rpc = decodeRpcMeta(rpcText, `'${peerName}' (key ${rkey})`);
    // Upstream 0.3.13+ publishes the data listener's host; older peers share rpc_meta's.
    const dataHost = descriptorField(descriptor, 'tcp_data_host', name);
    const ip = await lookupIp(typeof dataHost === 'string' && dataHost ? dataHost : rpc.ipOrHostName);
    return { descriptor, ip, rpcPort: rpc.rpcPort };
  }
}

/** One top-level field of a descriptor (for routing only; the native engine validates the whole). */
function descriptorField(text: string, field: string, name: string): unknown {
  try {
    const v = JSON.parse(text) as Record<string, unknown> | null;
    return v !== null && typeof v === 'object' ? v[field] : undefined;
  } catch (err) {
    throw new MooncakeError('MALFORMED_JSON', `the descriptor of '${name}' is not JSON`, { cause: err, details: { name } });
  }
}

/** The handshake daemon's counters a caller may want next to the data port's. */
function handshakeCounters(h: HandshakeServer): Record<string, number> {
  const s = h.stats();
  const dropped = Object.values(s.dropped).reduce((a, b) => a + b, 0);
  return {
    handshakeConnections: s.active,
    handshakeAccepted: s.accepted,
    handshakeDropped: dropped,
    handshakeRefused: s.dropped.refused,
    handshakeEvicted: s.dropped.evicted,
    handshakeOverload: s.dropped.overload,
    handshakeTimedOut: s.dropped.timeout,
  };
}

function abortError(signal: AbortSignal): MooncakeError {
  return new MooncakeError('ABORT_ERR', 'the operation was aborted', { cause: signal.reason });
}

export function formatHost(host: string): string {
  return net.isIPv6(host) ? `[${host}]` : host;
}

function splitHostPort(name: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(name) ?? /^([^:]+):(\d+)$/.exec(name);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new MooncakeError('INVALID_ARGUMENT', `in P2P mode a segment name is ip:port (the peer's rpc port), got '${name}'`);
  }
  return { host: m[1], port };
}

async function lookupIp(host: string): Promise<string> {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (net.isIP(h)) return h;
  try {
    return (await dns.promises.lookup(h)).address;
  } catch (err) {
    throw new MooncakeError('DNS', `cannot resolve ${h}`, { cause: err });
  }
}

/** An rpc_meta entry is stale when nothing answers a handshake probe at its address. */
async function staleRpcMeta(existing: string): Promise<boolean> {
  try {
    const m = decodeRpcMeta(existing); // unreadable: stale
    await probe(await lookupIp(m.ipOrHostName), m.rpcPort, { connectTimeoutMs: 1000, timeoutMs: 2000 });
    return false;
  } catch {
    return true;
  }
}
