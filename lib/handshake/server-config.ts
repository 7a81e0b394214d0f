/**
 * What the handshake daemon (server.ts) is configured with, reports and answers: its options, stats and
 * events, the replies upstream sends, the RPC port range rule, and the Notify body as upstream decodes it.
 */
import type { MooncakeError } from '../errors';
import { envInt } from '../util/options';
import type { HandshakeType } from './framing';
import { isJsonObject, stringifyFast, type JsonValue, type RawJson } from './json';
import type { Notify } from './notifications';

/** What upstream TCP replies to a Connection handshake (an all-empty HandShakeDesc). */
export const EMPTY_HANDSHAKE_DESC = {
  local_gid: '',
  local_lid: 0,
  local_nic_path: '',
  payload: '',
  peer_nic_path: '',
  qp_num: [] as JsonValue[],
  reply_msg: '',
} as const;
export const PROBE_REPLY = { status: 'success' } as const;
export const NOTIFY_ACCEPTED = { name: '', notify_msg: 'success' } as const;
export const NOTIFY_REJECTED = { name: '', notify_msg: '' } as const;

export interface RequestInfo {
  type: HandshakeType;
  /** The request was an untyped (OldProtocol) frame; it is handled as Connection. */
  oldProtocol: boolean;
  /** The JSON text received (FastWriter output ends with a newline). */
  text: string;
  remoteAddress: string;
  remotePort: number;
}

export type MetadataReply = JsonValue | RawJson | null | undefined;

export interface HandshakeHandlers {
  /**
   * P2P Metadata exchange: receives the peer's descriptor (upstream ignores it), returns the local
   * segment descriptor (an object, or RawJson text), or null when there is none. Without this
   * handler the reply is `null`, as from an upstream engine in HTTP-metadata mode. A throw also
   * replies `null` (upstream ignores the callback's error code) and counts a handler error.
   */
  onMetadata?(peerDescriptor: JsonValue, info: RequestInfo): MetadataReply | Promise<MetadataReply>;
  /**
   * A received notify. Return `false` (or throw) to reject it: the reply then has an empty
   * `notify_msg`, which the sender reports as a failure. Upstream always accepts. Without a
   * handler, notifies are acknowledged and discarded.
   */
  onNotify?(notify: Notify, info: RequestInfo): void | boolean | Promise<void | boolean>;
}

export interface HandshakeServerOptions extends HandshakeHandlers {
  /** Largest request frame accepted (default: `MC_HANDSHAKE_MAX_LENGTH`, else 1 MiB). */
  maxLength?: number;
  /** Deadline for a complete request frame after accept, ms (default 5000, upstream's SO_RCVTIMEO). */
  receiveTimeoutMs?: number;
  /** Deadline for a handler's answer, ms (default 5000); on expiry the connection is dropped. */
  handlerTimeoutMs?: number;
  /** How long to wait for the client to close after the reply, ms (default 5000). */
  closeWaitMs?: number;
  /** Kept-alive connections (see above): the next complete request must arrive within this, ms (default 30000). */
  idleTimeoutMs?: number;
  /**
   * Connections served at once (default 1024). When all are taken, a new connection takes the place
   * of the oldest one that has not sent a byte yet, from the address holding the most connections
   * (or the newcomer's own; dropped as 'evicted'); with none such, the new one is closed (dropped as
   * 'overload').
   */
  maxConnections?: number;
  /**
   * Connections from one source address at once (default a quarter of maxConnections, at least 64).
   * Beyond it, a new connection from that address takes the place of its oldest silent one, or is
   * closed.
   */
  maxConnectionsPerPeer?: number;
  /**
   * A connection that sends no byte for this long after accept is closed, ms (default 5000, and
   * never more than receiveTimeoutMs). Real clients write their request right after connecting.
   */
  firstByteTimeoutMs?: number;
  /** listen() backlog (default: `MC_HANDSHAKE_LISTEN_BACKLOG`, else 128). */
  backlog?: number;
  /**
   * Bytes of unfinished requests held across all connections (default 64 MiB, raised to one
   * maximal frame if smaller). A connection whose data would exceed it is dropped as 'overload',
   * so many clients sending large frames at once cannot exhaust memory.
   */
  maxBufferedBytes?: number;
  /**
   * Numeric IPs allowed to connect (the engine passes its data port's `allowedPeers`). Others are
   * closed at once, before a byte is read, and counted as dropped 'refused'. Default: anyone.
   */
  allowedPeers?: readonly string[];
}

export interface PortRange {
  min: number;
  max: number;
}

export interface HandshakeListenOptions {
  /** Bind address (default '0.0.0.0', like upstream's INADDR_ANY). */
  host?: string;
  /** Exact port; 0 = any free port. When omitted a random free port of `portRange` is used. */
  port?: number;
  /** Range for the random port (default: `MC_MIN_RPC_PORT`..`MC_MAX_RPC_PORT`, else 15000..17000). */
  portRange?: PortRange | [number, number];
}

export type DropReason = 'timeout' | 'malformed' | 'protocol' | 'truncated' | 'handler' | 'socket' | 'overload' | 'closed' | 'refused' | 'evicted';

export interface DropInfo {
  reason: DropReason;
  error?: MooncakeError;
  remoteAddress?: string;
  remotePort?: number;
}

export interface HandshakeServerStats {
  accepted: number;
  active: number;
  served: { connection: number; metadata: number; notify: number; probe: number };
  oldProtocol: number;
  rejectedNotifies: number;
  handlerErrors: number;
  dropped: Record<DropReason, number>;
  /** Bytes a client sent after its request frame (ignored). */
  extraBytes: number;
  /** Connections that did not close within closeWaitMs after the reply (then destroyed). */
  closeWaitTimeouts: number;
  /** Requests served on a connection kept alive by an earlier one (`keep_alive` notifies). */
  keptAlive: number;
  /** Bytes of unfinished requests held right now (bounded by maxBufferedBytes). */
  bufferedBytes: number;
}

export interface HandshakeServerEvents {
  request: [RequestInfo];
  drop: [DropInfo];
}

/**
 * The RPC port range upstream derives from MC_MIN_RPC_PORT / MC_MAX_RPC_PORT (each falling back to the
 * misspelt MC_MIN_PRC_PORT / MC_MAX_PRC_PORT, then 15000 / 17000), checked as its `ValidatePortRange`
 * does: both in 1024..65535 outside 32768..60999 and min <= max, else 15000..17000. The one owner of
 * this rule: the engine's data port and its handshake port both take their range from here.
 */
export function rpcPortRangeFromEnv(env: NodeJS.ProcessEnv = process.env): PortRange {
  const min = envInt('MC_MIN_RPC_PORT', env) ?? envInt('MC_MIN_PRC_PORT', env) ?? 15000;
  const max = envInt('MC_MAX_RPC_PORT', env) ?? envInt('MC_MAX_PRC_PORT', env) ?? 17000;
  const ok = (p: number): boolean => p >= 1024 && p <= 65535 && !(p >= 32768 && p <= 60999);
  if (!ok(min) || !ok(max) || min > max) return { min: 15000, max: 17000 };
  return { min, max };
}

/** A quarter of the slots per source address, at least 64 (and never more than all of them). */
export function defaultPerPeer(maxConnections: number): number {
  return Math.min(maxConnections, Math.max(64, Math.floor(maxConnections / 4)));
}


/** jsoncpp `asString()` of a scalar; undefined for arrays/objects (which upstream cannot convert). */
function jsonAsString(v: JsonValue | undefined): string | undefined {
  if (v === undefined || v === null) return '';
  switch (typeof v) {
    case 'string':
      return v;
    case 'boolean':
      return v ? 'true' : 'false';
    case 'bigint':
      return v.toString();
    case 'number':
      return stringifyFast(v).slice(0, -1);
    default:
      return undefined;
  }
}

/** Notify body → Notify, as upstream's TransferNotifyUtil::decode (undefined if unconvertible). */
export function decodeNotify(body: JsonValue): Notify | undefined {
  if (body !== null && !isJsonObject(body)) return undefined;
  const name = jsonAsString(body === null ? undefined : body.name);
  const msg = jsonAsString(body === null ? undefined : body.notify_msg);
  if (name === undefined || msg === undefined) return undefined;
  return { name, msg };
}
