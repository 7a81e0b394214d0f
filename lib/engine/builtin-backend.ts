/**
 * The built-in backend: mooncake-node's own engine (TCP data plane, native), its handshake daemon on
 * the rpc port and the publisher that keeps its metadata entries as upstream peers expect them.
 */
import { MooncakeError } from '../errors';
import { HandshakeServer, RawJson, rpcPortRangeFromEnv, sendNotify, type HandshakeServerStats, type Notify } from '../handshake';
import { MetadataPublisher } from '../metadata/publisher';
import { encodeRpcMeta } from '../metadata/rpc-meta';
import type { Backend, BackendContext } from './backend';
import type { NativeEngine } from './native';
import { defaultIoThreads } from './options';
import { formatHost, resolveSegment, staleRpcMeta, type ResolvedSegment } from './resolve';
import type { Segment } from './segment';

export async function createBuiltinBackend(ctx: BackendContext): Promise<Backend> {
  const { options: o, store, advertise, notifications } = ctx;
  const range = rpcPortRangeFromEnv();
  let started: NativeEngine | undefined;
  const handshake = new HandshakeServer({
    onMetadata: () => (started ? new RawJson(started.localDescriptor()) : null),
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
    const name = !store || o.localServerName === undefined ? `${formatHost(advertise)}:${rpcPort}` : o.localServerName;
    native = new ctx.binding.Engine(
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
      ctx.onCompletions,
    );
    await native.start();
    started = native;
    const publisher = store
      ? new MetadataPublisher({
          store,
          name,
          rpcMeta: encodeRpcMeta({ ipOrHostName: advertise, rpcPort }),
          describe: () => native!.localDescriptor(),
          refreshMs: o.metadataRefreshMs ?? 5000,
          ttlMs: o.metadataTtlMs,
          isStale: (existing) => staleRpcMeta(existing),
          onError: ctx.onMetadataError,
        })
      : undefined;
    await publisher?.start();
    return new BuiltinBackend(native, handshake, publisher, ctx, name, rpcPort);
  } catch (err) {
    await native?.close();
    await handshake.close().catch(() => undefined);
    throw err;
  }
}

class BuiltinBackend implements Backend {
  readonly kind = 'builtin';
  readonly protocol = 'tcp';

  constructor(
    readonly native: NativeEngine,
    private readonly handshake: HandshakeServer,
    private readonly publisher: MetadataPublisher | undefined,
    private readonly ctx: BackendContext,
    readonly name: string,
    readonly rpcPort: number,
  ) {}

  locate(name: string): Promise<ResolvedSegment> {
    return resolveSegment(name, this.ctx.store, () => this.native.localDescriptor());
  }

  async publish(): Promise<void> {
    await this.publisher?.publish();
  }

  async sendNotify(segment: Segment, notify: Notify): Promise<void> {
    if (!segment.rpcPort) throw new MooncakeError('SEGMENT_NOT_FOUND', `no handshake port known for ${segment.name}`);
    await sendNotify(segment.ip, segment.rpcPort, notify);
  }

  counters(): Record<string, number> {
    const s = this.handshake.stats();
    return {
      metadataRepublished: this.publisher?.republished ?? 0,
      handshakeConnections: s.active,
      handshakeAccepted: s.accepted,
      handshakeDropped: Object.values(s.dropped).reduce((a, b) => a + b, 0),
      handshakeRefused: s.dropped.refused,
      handshakeEvicted: s.dropped.evicted,
      handshakeOverload: s.dropped.overload,
      handshakeTimedOut: s.dropped.timeout,
    };
  }

  handshakeStats(): HandshakeServerStats {
    return this.handshake.stats();
  }

  ref(): void {
    this.handshake.ref();
  }

  unref(): void {
    this.handshake.unref();
  }

  stop(): Promise<void> {
    return this.native.close();
  }

  async close(): Promise<void> {
    await this.handshake.close();
    await this.publisher?.stop();
  }
}
