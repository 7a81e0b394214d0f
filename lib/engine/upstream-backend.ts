/**
 * The `mooncake` backend's control plane: upstream's libtransfer_engine.so publishes metadata and runs
 * its own handshake daemon, so here we only find the library (an option, MOONCAKE_TE_LIBRARY, or an
 * installed mooncake-transfer-engine wheel), create the native engine, learn its endpoint and what it
 * loaded, and bring upstream's notify list into the engine's notification queue.
 */
import { MooncakeError } from '../errors';
import type { Notify, NotificationQueue } from '../handshake';
import type { Backend, BackendContext, UpstreamBackendInfo } from './backend';
import type { NativeEngine } from './native';
import type { TransferEngineOptions } from './options';
import { resolveSegment, type ResolvedSegment } from './resolve';
import type { Segment } from './segment';
import { findMooncakeWheel, TESTED_WHEEL_VERSIONS, wheelOfLibrary } from './upstream-wheel';

export type { UpstreamBackendInfo } from './backend';

interface Resolved {
  library: string | undefined;
  source: UpstreamBackendInfo['source'];
  /** Why no wheel was found (added to LIBRARY_NOT_FOUND). */
  wheelProblem?: string;
}

/** Which library to load: the option, MOONCAKE_TE_LIBRARY, an installed wheel, else the loader path. */
async function resolveLibrary(o: TransferEngineOptions): Promise<Resolved> {
  if (o.library) return { library: o.library, source: 'option' };
  if (process.env.MOONCAKE_TE_LIBRARY) return { library: process.env.MOONCAKE_TE_LIBRARY, source: 'env' };
  const wheel = await findMooncakeWheel(o.python ?? process.env.MOONCAKE_PYTHON ?? 'python3');
  if ('library' in wheel) return { library: wheel.library, source: 'wheel' };
  return { library: undefined, source: 'loader-path', wheelProblem: wheel.reason };
}

export async function createUpstreamBackend(ctx: BackendContext): Promise<Backend> {
  const { options: o, advertise } = ctx;
  const p2p = ctx.store === undefined;
  // Upstream's default mode uses the name verbatim (any string without '/'); the port in it is only
  // part of the name. P2P mode rewrites it to ip:rpc_port, which we read back below.
  const requested = o.localServerName ?? `${advertise}:${process.pid}`;
  const resolved = await resolveLibrary(o);
  const native = new ctx.binding.Engine(
    {
      backend: 'mooncake',
      library: resolved.library,
      metadataServer: o.metadataServer,
      protocol: o.protocol ?? 'tcp',
      localServerName: requested,
      advertiseAddress: advertise,
      rpcPort: o.rpcPort,
      device: o.device,
      ascendRuntimeLibrary: o.ascendRuntimeLibrary,
      metricsMaxPeers: o.metricsMaxPeers,
    },
    ctx.onCompletions,
  );
  try {
    await native.start(); // off the event loop: upstream publishes to its metadata store inside
  } catch (e) {
    if (e instanceof MooncakeError && e.code === 'LIBRARY_NOT_FOUND' && resolved.wheelProblem) {
      throw new MooncakeError('LIBRARY_NOT_FOUND', `${e.message}\n  installed wheel: ${resolved.wheelProblem} (or name its interpreter with the \`python\` option / MOONCAKE_PYTHON)`, { cause: e });
    }
    throw e;
  }
  let endpoint = '';
  try {
    endpoint = native.localEndpoint();
  } catch {
    // older builds without getLocalIpAndPort: no rpc port known
  }
  const m = /:(\d+)$/.exec(endpoint);
  const rpcPort = m ? Number(m[1]) : 0;
  if (p2p && !endpoint) {
    await native.close();
    throw new MooncakeError('NOT_IMPLEMENTED', 'this Mooncake build cannot report its P2P endpoint (getLocalIpAndPort)');
  }
  return new UpstreamBackend(native, ctx, p2p ? endpoint : requested, o.protocol ?? 'tcp', rpcPort, backendInfo(native, resolved.source));
}

class UpstreamBackend implements Backend {
  readonly kind = 'mooncake';
  private readonly notifyTimer: NodeJS.Timeout;

  constructor(
    readonly native: NativeEngine,
    private readonly ctx: BackendContext,
    readonly name: string,
    readonly protocol: string,
    readonly rpcPort: number,
    readonly upstream: UpstreamBackendInfo,
  ) {
    this.notifyTimer = pollUpstreamNotifies(native, ctx.notifications);
  }

  /** Upstream opens segments itself; the descriptor is still read (best effort) to know the buffers. */
  locate(name: string): Promise<ResolvedSegment> {
    return resolveSegment(name, this.ctx.store, () => '').catch(() => ({ descriptor: '', ip: '', rpcPort: 0 }));
  }

  async publish(): Promise<void> {
    // upstream publishes its own descriptor
  }

  sendNotify(segment: Segment, notify: Notify): Promise<void> {
    return this.native.sendNotify(segment.handle, notify.name, notify.msg);
  }

  counters(): Record<string, number> {
    return { metadataRepublished: 0 };
  }

  handshakeStats(): undefined {
    return undefined;
  }

  ref(): void {}

  unref(): void {}

  /** Upstream's shutdown talks to its metadata store: the binding runs it on a pool thread. */
  stop(): Promise<void> {
    clearInterval(this.notifyTimer);
    return this.native.close();
  }

  async close(): Promise<void> {}
}

function backendInfo(native: NativeEngine, source: UpstreamBackendInfo['source']): UpstreamBackendInfo {
  const raw = JSON.parse(native.backendInfo()) as Omit<UpstreamBackendInfo, 'source' | 'wheel'>;
  const wheel = wheelOfLibrary(raw.library);
  return { ...raw, source, ...(wheel ? { wheel: { ...wheel, tested: TESTED_WHEEL_VERSIONS.includes(wheel.version) } } : {}) };
}

/** Moves upstream's received notifies into the queue every `intervalMs` (an unref'd timer). */
function pollUpstreamNotifies(native: NativeEngine, queue: NotificationQueue, intervalMs = 20): NodeJS.Timeout {
  const timer = setInterval(() => {
    try {
      for (const [name, msg] of native.takeNotifies()) queue.push({ name, msg });
    } catch {
      clearInterval(timer); // the engine closed
    }
  }, intervalMs);
  timer.unref();
  return timer;
}
