/**
 * Upstream Mooncake's handshake socket protocol (the daemon on every engine's rpc_port: Probe,
 * Notify, P2P Metadata exchange, Connection) — framing, server, client and the notify queue.
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
export { NotificationQueue, DEFAULT_NOTIFY_CAPACITY } from './notifications';
export type { Notify, NotificationQueueOptions, NotificationQueueEvents } from './notifications';
