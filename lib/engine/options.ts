import * as os from 'node:os';
import { allowList } from '../util/allow-list';
import { envInt, intOption } from '../util/options';
import { MooncakeError } from '../errors';
import type { NotificationQueueOptions } from '../handshake/notifications';

/** Options of `TransferEngine.create`. Every field has an upstream-compatible default. */
export interface TransferEngineOptions {
  /**
   * Where peers find each other, with upstream's connection-string rules: `http://host:port/metadata`
   * (HTTP metadata server), `etcd://host:2379[,host2:2379…]` (also any string without `://`),
   * `redis://host:6379`, or `P2PHANDSHAKE` (no store: segment names are `ip:rpcPort`).
   */
  metadataServer: string;
  /** This engine's segment name. Default `<advertised ip>:<rpc port>`. Must be unique per metadata store. */
  localServerName?: string;
  /**
   * Data-plane protocol. The built-in backend speaks `tcp`; the `mooncake` backend installs whatever
   * the loaded upstream build has: `tcp`, `rdma`, `ascend` (HCCL / ADXL), `efa`, ...
   */
  protocol?: string;
  /**
   * `builtin` (default): mooncake-node's own engine (TCP). `mooncake`: an installed upstream
   * libtransfer_engine.so loaded at run time (see `library`), for transports the built-in engine lacks.
   */
  backend?: 'builtin' | 'mooncake';
  /**
   * For `backend: 'mooncake'`: path of libtransfer_engine.so. Default `MOONCAKE_TE_LIBRARY`, else the
   * one in the `mooncake-transfer-engine*` wheel installed for `python`, else the loader path.
   */
  library?: string;
  /**
   * For `backend: 'mooncake'` without `library`: the Python interpreter whose environment has the
   * wheel (e.g. vLLM's `/opt/venv/bin/python`). Default `MOONCAKE_PYTHON`, else `python3` on PATH.
   */
  python?: string;
  /**
   * For `backend: 'mooncake'` on Ascend: the NPU this engine serves (`npu:N`). It is made current on
   * every thread that calls into upstream, before the engine is created (ascend_direct reads it there).
   */
  device?: string;
  /** Address the data and handshake listeners bind to. Default: all interfaces. */
  bindAddress?: string;
  /**
   * Address published for peers to connect to. Default: `MC_TCP_BIND_ADDRESS`, else `bindAddress`
   * when specific, else the first non-internal IPv4 address, else 127.0.0.1.
   */
  advertiseAddress?: string;
  /** Data port; default a free port in [`MC_MIN_RPC_PORT`, `MC_MAX_RPC_PORT`] (15000–17000) as upstream (see rpcPortRangeFromEnv). */
  dataPort?: number;
  /** Handshake (RPC) port; default like dataPort. */
  rpcPort?: number;
  /** Engine I/O threads. Default 1 on machines with up to 4 cores, else 2. */
  ioThreads?: number;
  /** Persistent connections per peer. Default 2. */
  connectionsPerPeer?: number;
  /** Requests larger than this are split across a peer's connections. Default 1 MiB. */
  sliceSize?: number;
  /** Requests in flight per connection. Default 64. */
  maxInflightPerConnection?: number;
  /**
   * Fail a transfer when its connection makes no progress for this long. Default 30 s
   * (`MC_TCP_STATUS_TIMEOUT_SEC`). The data server closes a connection stalled mid-request for as long,
   * and both sides probe silent connections (TCP keepalive, `TCP_USER_TIMEOUT`), so a peer that
   * vanished without a FIN is dropped after about twice this.
   */
  idleTimeoutMs?: number;
  /** Connect timeout to a peer's data port. Default 5 s. */
  connectTimeoutMs?: number;
  /** Highest TCP framing to use: 2 (default) or 1 (`MC_TCP_PROTO=1`). */
  tcpProtoVersion?: 1 | 2;
  /**
   * Numeric peer IPs allowed to connect to the data port and the handshake port; others are closed on
   * accept (counted in stats() `serverConnectionsRefused` / `handshakeRefused`). Default: anyone
   * (upstream's behaviour). An address filter, not authentication: see the README's threat model.
   */
  allowedPeers?: string[];
  /**
   * Same-host fast path (default true): a peer on this host that shares its memory (engine-allocated,
   * `allocateManagedBuffer`) is written and read with memcpy instead of TCP. Advertised with descriptor
   * fields upstream peers ignore.
   */
  sameHostFastPath?: boolean;
  /**
   * Most concurrent data connections served. Default 4096. When every slot is taken, a new connection
   * takes the slot of the oldest one that has not sent a byte yet (counted in
   * `serverConnectionsEvicted` and `serverConnectionsRefused`), or is refused if there is none.
   */
  maxServerConnections?: number;
  /**
   * Most concurrent data connections from one source address. Default a quarter of
   * `maxServerConnections` (1024), at least 64, so no single host can take every slot. An upstream peer opens one
   * connection per request unless its connection pool is on: raise this for peers that run more
   * than this many requests at once towards this engine.
   */
  maxServerConnectionsPerPeer?: number;
  /**
   * A connection to the data port or the handshake port that sends no byte for this long after it
   * was accepted is closed. Default 5000 ms. Real peers write their request right after connecting.
   */
  firstByteTimeoutMs?: number;
  /**
   * Peers that get their own series in the engine's metrics (bytes, requests and failures per peer;
   * see `collectMetrics()`); peers seen after that many are counted together as peer `other`, so
   * the label set stays bounded. Default 64. 0 turns the per-peer counters and the transfer latency
   * histogram off.
   */
  metricsMaxPeers?: number;
  /**
   * Bounds of the received-notify buffer (see `getNotifies()`): entries (default 4096), bytes
   * (default 64 MiB), one notify's size (default 1 MiB; larger ones are refused, the sender's
   * `sendNotify` fails) and what a full buffer does: `'drop-oldest'` (default; dropped ones were
   * already emitted as 'notify' events) or `'reject'` (the sender's `sendNotify` fails instead).
   */
  notifies?: NotificationQueueOptions;
  /** How often the engine checks its metadata entries and republishes them if lost. Default 5000 ms; 0 disables. */
  metadataRefreshMs?: number;
  /** Timeout of each metadata request. Default 3000 ms (HTTP, redis) or 5000 ms (etcd), as upstream. */
  metadataTimeoutMs?: number;
  /**
   * Liveness (opt-in): this engine's entries disappear about this many ms after it stops renewing
   * them (e.g. it was killed), so peers stop using them. etcd: a lease the client keeps alive (whole
   * seconds); redis: `SET … PX`, rewritten every third of the TTL; HTTP: rewritten likewise, and the
   * server must expire entries itself (`mooncake-node metadata-server --ttl-ms`). Default: plain keys
   * that never expire, as upstream.
   */
  metadataTtlMs?: number;
  /**
   * The Ascend runtime (CANN's libascendcl.so) used for `npu:N` memory. Default:
   * `MOONCAKE_ASCENDCL_LIBRARY`, else the loader path and CANN's install directories.
   */
  ascendRuntimeLibrary?: string;
}

export function defaultAdvertiseAddress(bindAddress?: string): string {
  const env = process.env.MC_TCP_BIND_ADDRESS;
  if (env) return env;
  if (bindAddress && bindAddress !== '0.0.0.0' && bindAddress !== '::') return bindAddress;
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

export function defaultIoThreads(): number {
  return os.availableParallelism() <= 4 ? 1 : 2;
}

export function validateOptions(o: TransferEngineOptions): void {
  if (o === null || typeof o !== 'object') throw new MooncakeError('INVALID_CONFIG', 'options must be an object');
  if (typeof o.metadataServer !== 'string' || o.metadataServer === '') {
    throw new MooncakeError('INVALID_CONFIG', "metadataServer is required, e.g. 'http://127.0.0.1:8080/metadata' or 'P2PHANDSHAKE'");
  }
  if (o.backend !== undefined && o.backend !== 'builtin' && o.backend !== 'mooncake') {
    throw new MooncakeError('INVALID_CONFIG', `backend must be 'builtin' or 'mooncake', got '${String(o.backend)}'`);
  }
  if (o.protocol !== undefined && (typeof o.protocol !== 'string' || o.protocol === '')) {
    throw new MooncakeError('INVALID_CONFIG', 'protocol must be a non-empty string');
  }
  if ((o.backend ?? 'builtin') === 'builtin' && o.protocol !== undefined && o.protocol !== 'tcp') {
    throw new MooncakeError('NOT_SUPPORTED_TRANSPORT', `the built-in backend speaks 'tcp', not '${o.protocol}'; use backend: 'mooncake' with an upstream build that has it`);
  }
  if (o.device !== undefined && (typeof o.device !== 'string' || !/^npu:\d+$/.test(o.device))) {
    throw new MooncakeError('INVALID_CONFIG', `device must look like 'npu:0', got '${String(o.device)}'`);
  }
  if (o.library !== undefined && (typeof o.library !== 'string' || o.library === '')) {
    throw new MooncakeError('INVALID_CONFIG', 'library must be a path to libtransfer_engine.so');
  }
  if (o.python !== undefined && (typeof o.python !== 'string' || o.python === '')) {
    throw new MooncakeError('INVALID_CONFIG', 'python must name a Python interpreter');
  }
  if (o.localServerName !== undefined && (typeof o.localServerName !== 'string' || o.localServerName === '' || o.localServerName.includes('/'))) {
    throw new MooncakeError('INVALID_CONFIG', 'localServerName must be a non-empty string without "/"');
  }
  intOption('dataPort', o.dataPort, 0, 65535);
  intOption('rpcPort', o.rpcPort, 0, 65535);
  intOption('ioThreads', o.ioThreads, 1, 64);
  intOption('connectionsPerPeer', o.connectionsPerPeer, 1, 64);
  intOption('sliceSize', o.sliceSize, 4096);
  intOption('maxInflightPerConnection', o.maxInflightPerConnection, 1, 65536);
  intOption('idleTimeoutMs', o.idleTimeoutMs, 1, 2 ** 31 - 1);
  intOption('connectTimeoutMs', o.connectTimeoutMs, 1, 2 ** 31 - 1);
  intOption('maxServerConnections', o.maxServerConnections, 1, 1 << 20);
  intOption('maxServerConnectionsPerPeer', o.maxServerConnectionsPerPeer, 1, 1 << 20);
  intOption('firstByteTimeoutMs', o.firstByteTimeoutMs, 1, 2 ** 31 - 1);
  intOption('metricsMaxPeers', o.metricsMaxPeers, 0, 1 << 16);
  if (o.notifies !== undefined) {
    if (o.notifies === null || typeof o.notifies !== 'object') throw new MooncakeError('INVALID_CONFIG', 'notifies must be an object');
    intOption('notifies.capacity', o.notifies.capacity, 0);
    intOption('notifies.maxBytes', o.notifies.maxBytes, 0);
    intOption('notifies.maxMessageBytes', o.notifies.maxMessageBytes, 0);
    if (o.notifies.whenFull !== undefined && o.notifies.whenFull !== 'drop-oldest' && o.notifies.whenFull !== 'reject') {
      throw new MooncakeError('INVALID_CONFIG', `notifies.whenFull must be 'drop-oldest' or 'reject', got ${JSON.stringify(o.notifies.whenFull)}`);
    }
  }
  intOption('metadataRefreshMs', o.metadataRefreshMs, 0);
  intOption('metadataTimeoutMs', o.metadataTimeoutMs);
  intOption('metadataTtlMs', o.metadataTtlMs, 100, 2 ** 31 - 1);
  if (o.tcpProtoVersion !== undefined && o.tcpProtoVersion !== 1 && o.tcpProtoVersion !== 2) {
    throw new MooncakeError('INVALID_CONFIG', 'tcpProtoVersion must be 1 or 2');
  }
  allowList(o.allowedPeers, 'allowedPeers'); // throws INVALID_CONFIG naming a bad entry
}

/** Upstream env knobs that map onto our options (explicit options win). */
export function envDefaults(): Partial<TransferEngineOptions> {
  const out: Partial<TransferEngineOptions> = {};
  if (process.env.MC_TCP_PROTO === '1') out.tcpProtoVersion = 1;
  const statusSec = envInt('MC_TCP_STATUS_TIMEOUT_SEC');
  if (statusSec !== undefined && statusSec > 0) out.idleTimeoutMs = statusSec * 1000;
  return out;
}
