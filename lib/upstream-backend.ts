/**
 * The `mooncake` backend's control plane: upstream's libtransfer_engine.so publishes metadata and runs
 * its own handshake daemon, so here we only create the native engine, learn its endpoint, and bring
 * upstream's notify list into the engine's notification queue.
 */
import { MooncakeError } from './errors';
import type { NotificationQueue } from './handshake';
import type { CompletionCallback, NativeBinding, NativeEngine } from './native';
import type { TransferEngineOptions } from './options';

export interface UpstreamNative {
  native: NativeEngine;
  name: string;
  rpcPort: number;
}

export async function createUpstreamNative(binding: NativeBinding, o: TransferEngineOptions, advertise: string, onCompletions: CompletionCallback): Promise<UpstreamNative> {
  const p2p = o.metadataServer === 'P2PHANDSHAKE';
  // Upstream's default mode uses the name verbatim (any string without '/'); the port in it is only
  // part of the name. P2P mode rewrites it to ip:rpc_port, which we read back below.
  const requested = o.localServerName ?? `${advertise}:${process.pid}`;
  const native = new binding.Engine(
    {
      backend: 'mooncake',
      library: o.library,
      metadataServer: o.metadataServer,
      protocol: o.protocol ?? 'tcp',
      localServerName: requested,
      advertiseAddress: advertise,
      rpcPort: o.rpcPort,
      device: o.device,
      deviceLibrary: o.ascendRuntimeLibrary,
    },
    onCompletions,
  );
  await native.start(); // off the event loop: upstream publishes to its metadata store inside
  let endpoint = '';
  try {
    endpoint = native.localEndpoint();
  } catch {
    // older builds without getLocalIpAndPort: no rpc port known
  }
  const m = /:(\d+)$/.exec(endpoint);
  const rpcPort = m ? Number(m[1]) : 0;
  if (p2p && !endpoint) {
    await native.closeAsync();
    throw new MooncakeError('NOT_IMPLEMENTED', 'this Mooncake build cannot report its P2P endpoint (getLocalIpAndPort)');
  }
  return { native, name: p2p ? endpoint : requested, rpcPort };
}

/** Moves upstream's received notifies into the queue every `intervalMs` (an unref'd timer). */
export function pollUpstreamNotifies(native: NativeEngine, queue: NotificationQueue, intervalMs = 20): NodeJS.Timeout {
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
