/**
 * Upstream Mooncake's handshake socket protocol (the daemon on every engine's rpc_port: Probe,
 * Notify, P2P Metadata exchange, Connection) — framing, server, client and the notify queue.
 *
 * Wiring in an engine:
 *
 *   const notifies = new NotificationQueue();
 *   const daemon = new HandshakeServer({
 *     onNotify: (n) => notifies.push(n),
 *     // P2P mode only (upstream registers no Metadata callback in HTTP mode, so it answers null):
 *     onMetadata: () => localDescriptor() ?? null,   // object (bigint ok) or RawJson text
 *   });
 *   const rpcPort = await daemon.listen();          // random free port in MC_MIN/MAX_RPC_PORT
 *   // HTTP mode: PUT mooncake/rpc_meta/<name> = {"ip_or_host_name": <advertised ip>, "rpc_port": rpcPort}
 *   // P2P mode:  the segment name becomes `${host}:${rpcPort}`
 *   getNotifies()               -> notifies.drain()
 *   notify a peer               -> sendNotify(rpc_meta.ip_or_host_name, rpc_meta.rpc_port, { name, msg })
 *                                  (P2P: parseHostPort(segmentName)); upstream sends it once the
 *                                  transfer batch it belongs to is COMPLETED
 *   openSegment(name) in P2P    -> fetchPeerDescriptor(host, port, localDescriptor())
 *   probe a peer                -> probe(host, port)
 *   close                       -> daemon.close(); notifies.close()
 */
export {
  HandshakeType,
  HANDSHAKE_TYPE_NAMES,
  isHandshakeType,
  LENGTH_BYTES,
  DEFAULT_MAX_LENGTH,
  MAX_MAX_LENGTH,
  handshakeMaxLengthFromEnv,
  encodeFrame,
  encodeMessage,
  parseFrameJson,
  decodeFrames,
  FrameDecoder,
} from './framing';
export type { Frame, FrameDecoderOptions } from './framing';
export { RawJson, parseJson, stringifyFast, quoteFast, messageText, isJsonObject } from './json';
export type { JsonValue, JsonObject } from './json';
export {
  HandshakeServer,
  EMPTY_HANDSHAKE_DESC,
  PROBE_REPLY,
  NOTIFY_ACCEPTED,
  NOTIFY_REJECTED,
  rpcPortRangeFromEnv,
  decodeNotify,
} from './server';
export type {
  HandshakeHandlers,
  HandshakeServerOptions,
  HandshakeListenOptions,
  HandshakeServerStats,
  HandshakeServerEvents,
  RequestInfo,
  MetadataReply,
  PortRange,
  DropInfo,
  DropReason,
} from './server';
export {
  exchange,
  sendHandshake,
  probe,
  sendNotify,
  fetchPeerDescriptor,
  parseHostPort,
  handshakeConnectTimeoutFromEnv,
  DEFAULT_HANDSHAKE_PORT,
} from './client';
export type { HandshakeRequestOptions, HandshakeResponse } from './client';
export { NotificationQueue, DEFAULT_NOTIFY_CAPACITY, DEFAULT_NOTIFY_MAX_BYTES, DEFAULT_NOTIFY_MAX_MESSAGE_BYTES, notifyBytes } from './notifications';
export type { Notify, NotificationQueueOptions, NotificationQueueEvents, NotifyRejectInfo, NotifyRejectReason } from './notifications';
export { NotifySession } from './notify-session';
export type { NotifySessionOptions } from './notify-session';
