/**
 * Client side of upstream Mooncake's handshake socket: one short-lived connection per request
 * (connect, write one frame, read one frame of the same type, close), as
 * `SocketHandShakePlugin::doSend*` does.
 *
 * Errors (MooncakeError codes):
 * - 'DNS'              the host name did not resolve;
 * - 'CONNECT_FAILED'   no connection (refused, unreachable, or no connect within connectTimeoutMs:
 *                      then details.timedOut is true);
 * - 'TIMEOUT'          connected, but no complete reply within timeoutMs;
 * - 'SOCKET'           the connection broke, or the peer closed it without replying (an upstream
 *                      server does that for a request it cannot read);
 * - 'PROTOCOL_ERROR'   the reply frame was unreadable (length 0 or over maxLength), of another type
 *                      than the request (upstream: ERR_SOCKET), or of an unexpected shape;
 * - 'MALFORMED_JSON'   the reply was not JSON (like upstream, no further address is tried);
 * - 'REJECT_HANDSHAKE' a notify was refused (empty `notify_msg` in the reply);
 * - 'METADATA'         the peer answered a Metadata request with `null` (no local segment);
 * - 'ABORT_ERR'        options.signal fired.
 * Every address of a host name is tried in turn; the last error is thrown.
 */

import { promises as dns } from 'node:dns';
import * as net from 'node:net';
import { MooncakeError, isMooncakeError } from '../errors';
import {
  FrameDecoder,
  HANDSHAKE_TYPE_NAMES,
  HandshakeType,
  encodeFrame,
  handshakeMaxLengthFromEnv,
  type Frame,
} from './framing';
import { RawJson, isJsonObject, messageText, parseJson, stringifyFast, type JsonObject, type JsonValue } from './json';
import type { Notify } from './notifications';
import { envInt } from '../util/options';

export interface HandshakeRequestOptions {
  /** Connect deadline per address, ms (default: MC_HANDSHAKE_CONNECT_TIMEOUT seconds, else 5000). */
  connectTimeoutMs?: number;
  /** Deadline for the complete reply once connected, ms (default 60000, upstream's SO_RCVTIMEO). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Largest reply accepted (default: MC_HANDSHAKE_MAX_LENGTH, else 1 MiB). */
  maxLength?: number;
  /** Send an untyped (OldProtocol) Connection frame and expect an untyped reply. */
  oldProtocol?: boolean;
  /** Address family for name resolution: 0 = any (default), 4 or 6. Upstream resolves IPv4 only unless MC_USE_IPV6. */
  family?: 0 | 4 | 6;
}

export interface HandshakeResponse {
  type: HandshakeType;
  oldProtocol: boolean;
  /** The reply's JSON text as received. */
  text: string;
  value: JsonValue;
  /** The address that answered. */
  address: string;
  port: number;
}

/** MC_HANDSHAKE_CONNECT_TIMEOUT (whole seconds, 1..3599) in ms; 5000 otherwise. */
export function handshakeConnectTimeoutFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const n = envInt('MC_HANDSHAKE_CONNECT_TIMEOUT', env) ?? 0;
  return n > 0 && n < 3600 ? n * 1000 : 5000;
}

/** Default port in segment names without one (upstream MC_HANDSHAKE_PORT default). */
export const DEFAULT_HANDSHAKE_PORT = 12001;

/**
 * Splits a P2P segment name (`host:port`, `[v6]:port`, `host`) like upstream's
 * parseHostNameWithPort; a missing or invalid port gives `defaultPort`.
 */
export function parseHostPort(name: string, defaultPort: number = DEFAULT_HANDSHAKE_PORT): { host: string; port: number } {
  const toPort = (s: string): number => {
    if (!/^\d{1,5}$/.test(s)) return defaultPort;
    const n = Number(s);
    return n >= 1 && n <= 65535 ? n : defaultPort;
  };
  const v6 = /^\[([^\]]*)\](?::(.*))?$/.exec(name);
  if (v6) return { host: v6[1]!, port: v6[2] === undefined || v6[2] === '' ? defaultPort : toPort(v6[2]) };
  if (net.isIPv6(name)) return { host: name, port: defaultPort };
  const i = name.lastIndexOf(':');
  if (i < 0) return { host: name, port: defaultPort };
  return { host: name.slice(0, i), port: toPort(name.slice(i + 1)) };
}

function abortError(signal: AbortSignal): MooncakeError {
  return new MooncakeError('ABORT_ERR', 'the handshake request was aborted', { cause: signal.reason });
}

async function resolveAll(host: string, family: 0 | 4 | 6, signal: AbortSignal | undefined): Promise<{ address: string; family: number }[]> {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const ipFamily = net.isIP(bare);
  if (ipFamily !== 0) return [{ address: bare, family: ipFamily }];
  try {
    const res = await dns.lookup(bare, { all: true, family, verbatim: true });
    if (signal?.aborted) throw abortError(signal);
    if (res.length === 0) throw new Error('no addresses');
    return res;
  } catch (e) {
    if (isMooncakeError(e)) throw e;
    throw new MooncakeError('DNS', `cannot resolve handshake peer ${bare}: ${(e as Error).message}`, { cause: e, details: { host: bare } });
  }
}

interface Attempt {
  address: string;
  family: number;
  port: number;
  frame: Buffer;
  connectTimeoutMs: number;
  timeoutMs: number;
  maxLength: number;
  signal: AbortSignal | undefined;
}

function attempt(a: Attempt): Promise<Frame> {
  return new Promise<Frame>((resolve, reject) => {
    const where = { address: a.address, port: a.port };
    const decoder = new FrameDecoder({ maxLength: a.maxLength });
    let connected = false;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const socket = net.connect({ host: a.address, port: a.port, family: a.family, noDelay: true });

    const settle = (err: MooncakeError | undefined, frame?: Frame): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      a.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(frame!);
    };
    const onAbort = (): void => settle(abortError(a.signal!));
    if (a.signal) {
      if (a.signal.aborted) return settle(abortError(a.signal));
      a.signal.addEventListener('abort', onAbort, { once: true });
    }

    timer = setTimeout(() => {
      settle(new MooncakeError('CONNECT_FAILED', `handshake connect to ${a.address}:${a.port} timed out after ${a.connectTimeoutMs} ms`, { details: { ...where, timedOut: true } }));
    }, a.connectTimeoutMs);

    socket.on('connect', () => {
      connected = true;
      clearTimeout(timer);
      timer = setTimeout(() => {
        settle(new MooncakeError('TIMEOUT', `no handshake reply from ${a.address}:${a.port} within ${a.timeoutMs} ms`, { details: { ...where, buffered: decoder.buffered } }));
      }, a.timeoutMs);
      socket.write(a.frame);
    });

    socket.on('error', (e: NodeJS.ErrnoException) => {
      settle(
        connected
          ? new MooncakeError('SOCKET', `handshake connection to ${a.address}:${a.port} failed: ${e.message}`, { cause: e, details: { ...where, errno: e.code } })
          : new MooncakeError('CONNECT_FAILED', `cannot connect to handshake peer ${a.address}:${a.port}: ${e.message}`, { cause: e, details: { ...where, errno: e.code } }),
      );
    });

    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch (e) {
        return settle(new MooncakeError('PROTOCOL_ERROR', `unreadable handshake reply from ${a.address}:${a.port}: ${(e as Error).message}`, { cause: e, details: { ...where, ...(e as MooncakeError).details } }));
      }
      if (frames.length > 0) settle(undefined, frames[0]);
    });

    socket.on('end', () => {
      const partial = decoder.buffered;
      settle(
        new MooncakeError('SOCKET', `handshake peer ${a.address}:${a.port} closed the connection ${partial ? 'inside its reply' : 'without replying'}`, {
          details: { ...where, reason: partial ? 'truncated' : 'closed', buffered: partial },
        }),
      );
    });

    socket.on('close', () => {
      settle(new MooncakeError('SOCKET', `handshake connection to ${a.address}:${a.port} closed`, { details: where }));
    });
  });
}

function checkTimeout(name: string, v: number): number {
  if (!Number.isFinite(v) || v <= 0) throw new MooncakeError('INVALID_ARGUMENT', `${name} must be a positive number of ms, got ${v}`);
  return v;
}

/**
 * Sends one handshake request and returns the whole reply. `body` is serialized as FastWriter
 * would (or sent verbatim if it is a RawJson).
 */
export async function exchange(host: string, port: number, type: HandshakeType, body: JsonValue | RawJson, options: HandshakeRequestOptions = {}): Promise<HandshakeResponse> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new MooncakeError('INVALID_ARGUMENT', `invalid handshake port ${port}`);
  const old = options.oldProtocol === true;
  const frame = encodeFrame(type, messageText(body), { oldProtocol: old });
  const connectTimeoutMs = checkTimeout('connectTimeoutMs', options.connectTimeoutMs ?? handshakeConnectTimeoutFromEnv());
  const timeoutMs = checkTimeout('timeoutMs', options.timeoutMs ?? 60_000);
  const maxLength = options.maxLength ?? handshakeMaxLengthFromEnv();
  const { signal } = options;
  if (signal?.aborted) throw abortError(signal);

  const addresses = await resolveAll(host, options.family ?? 0, signal);
  let last: MooncakeError | undefined;
  for (const addr of addresses) {
    let reply: Frame;
    try {
      reply = await attempt({ address: addr.address, family: addr.family, port, frame, connectTimeoutMs, timeoutMs, maxLength, signal });
    } catch (e) {
      const err = e as MooncakeError;
      if (err.code === 'ABORT_ERR') throw err;
      last = err;
      continue;
    }
    if (reply.type !== type || reply.oldProtocol !== old) {
      const got = reply.oldProtocol ? 'an untyped' : `a ${HANDSHAKE_TYPE_NAMES[reply.type]}`;
      last = new MooncakeError('PROTOCOL_ERROR', `handshake peer ${addr.address}:${port} answered a ${old ? 'untyped ' : ''}${HANDSHAKE_TYPE_NAMES[type]} request with ${got} frame`, {
        details: { address: addr.address, port, requestType: type, replyType: reply.type, replyOldProtocol: reply.oldProtocol },
      });
      continue; // upstream: ERR_SOCKET, next address
    }
    let value: JsonValue;
    try {
      value = parseJson(reply.payload);
    } catch (e) {
      // Upstream stops at ERR_MALFORMED_JSON instead of trying the next address.
      throw new MooncakeError('MALFORMED_JSON', `handshake peer ${addr.address}:${port} sent a reply that is not JSON: ${(e as Error).message}`, {
        cause: e,
        details: { address: addr.address, port },
      });
    }
    return { type: reply.type, oldProtocol: reply.oldProtocol, text: reply.payload.toString('utf8'), value, address: addr.address, port };
  }
  throw last ?? new MooncakeError('CONNECT_FAILED', `no address to reach ${host}:${port}`);
}

/** Sends one handshake request and returns the parsed reply. */
export async function sendHandshake(host: string, port: number, type: HandshakeType, body: JsonValue | RawJson, options: HandshakeRequestOptions = {}): Promise<JsonValue> {
  return (await exchange(host, port, type, body, options)).value;
}

/** Probe (`send_probe`): resolves with the reply (`{"status":"success"}` from upstream). */
export async function probe(host: string, port: number, options: HandshakeRequestOptions = {}): Promise<JsonValue> {
  return sendHandshake(host, port, HandshakeType.Probe, {}, options);
}

/** Sends a notify; rejects with REJECT_HANDSHAKE if the peer's reply has an empty `notify_msg`. */
export async function sendNotify(host: string, port: number, notify: Notify, options: HandshakeRequestOptions = {}): Promise<void> {
  const reply = await sendHandshake(host, port, HandshakeType.Notify, { name: notify.name, notify_msg: notify.msg }, options);
  if (reply !== null && !isJsonObject(reply)) {
    throw new MooncakeError('PROTOCOL_ERROR', `notify reply from ${host}:${port} is not an object`, { details: { host, port, reply: stringifyFast(reply) } });
  }
  const msg = reply === null ? undefined : reply.notify_msg;
  if (msg === undefined || msg === null || msg === '') {
    throw new MooncakeError('REJECT_HANDSHAKE', `notify rejected by ${host}:${port}`, { details: { host, port, name: notify.name } });
  }
}

/**
 * P2P Metadata exchange (`openSegment` in P2PHANDSHAKE mode): sends the local segment descriptor,
 * resolves with the peer's (integers beyond 2^53 come back as bigint).
 */
export async function fetchPeerDescriptor(host: string, port: number, localDescriptor: JsonValue | RawJson, options: HandshakeRequestOptions = {}): Promise<JsonObject> {
  const reply = await sendHandshake(host, port, HandshakeType.Metadata, localDescriptor, options);
  if (reply === null) {
    throw new MooncakeError('METADATA', `handshake peer ${host}:${port} has no segment descriptor to exchange (is it in P2PHANDSHAKE mode?)`, { details: { host, port } });
  }
  if (!isJsonObject(reply)) {
    throw new MooncakeError('PROTOCOL_ERROR', `metadata reply from ${host}:${port} is not an object`, { details: { host, port } });
  }
  return reply;
}
