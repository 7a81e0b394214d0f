/**
 * The `rpc_meta` entry every engine publishes under `mooncake/[cluster/]rpc_meta/<name>`: where its
 * handshake daemon listens. Upstream writes it with jsoncpp as `{"ip_or_host_name":"…","rpc_port":N}`
 * and reads `ip_or_host_name` as a string and `rpc_port` as an unsigned integer. This is the one codec
 * for it: the engine publishes with `encodeRpcMeta` and reads peers' entries with `decodeRpcMeta`
 * (fuzzed by fuzz/js, target `rpc_meta`).
 */
import { MooncakeError } from '../errors';
import { isJsonObject, parseJson, type JsonValue } from '../handshake/json';

export interface RpcMeta {
  /** Host name or IP of the peer's handshake daemon. */
  ipOrHostName: string;
  /** Its port, 1–65535. */
  rpcPort: number;
}

/** Longest host name accepted (DNS names are at most 253 characters; IPv6 with a zone fits). */
const MAX_HOST = 255;

/** The text upstream peers read (compact, keys sorted, as jsoncpp writes it). */
export function encodeRpcMeta(m: RpcMeta): string {
  checkHost(m.ipOrHostName, 'INVALID_ARGUMENT');
  if (!Number.isInteger(m.rpcPort) || m.rpcPort < 1 || m.rpcPort > 65535) {
    throw new MooncakeError('INVALID_ARGUMENT', `rpc_meta: rpc_port must be an integer in [1, 65535], got ${String(m.rpcPort)}`);
  }
  return JSON.stringify({ ip_or_host_name: m.ipOrHostName, rpc_port: m.rpcPort });
}

/**
 * Reads a peer's rpc_meta. Anything that is not an object with a usable host and a port in 1–65535
 * is MALFORMED_JSON (with `details.what` when given, e.g. the key it came from).
 */
export function decodeRpcMeta(text: string, what?: string): RpcMeta {
  const where = what === undefined ? 'rpc_meta' : `rpc_meta of ${what}`;
  let v: JsonValue;
  try {
    v = parseJson(text);
  } catch (cause) {
    throw new MooncakeError('MALFORMED_JSON', `${where} is not JSON`, { cause, details: { what } });
  }
  if (!isJsonObject(v)) throw new MooncakeError('MALFORMED_JSON', `${where} is not a JSON object`, { details: { what } });
  const host = Object.prototype.hasOwnProperty.call(v, 'ip_or_host_name') ? v.ip_or_host_name : undefined;
  const port = Object.prototype.hasOwnProperty.call(v, 'rpc_port') ? v.rpc_port : undefined;
  if (typeof host !== 'string') throw new MooncakeError('MALFORMED_JSON', `${where} lacks ip_or_host_name`, { details: { what } });
  checkHost(host, 'MALFORMED_JSON', where);
  const n = typeof port === 'bigint' ? (port <= 65535n && port >= 0n ? Number(port) : NaN) : port;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) {
    throw new MooncakeError('MALFORMED_JSON', `${where} lacks a usable rpc_port (an integer in [1, 65535])`, { details: { what } });
  }
  return { ipOrHostName: host, rpcPort: n };
}

function checkHost(host: unknown, code: 'INVALID_ARGUMENT' | 'MALFORMED_JSON', where = 'rpc_meta'): asserts host is string {
  // A host is printable ASCII without spaces or '/' (names, IPv4, IPv6 with brackets or a zone).
  if (typeof host !== 'string' || host.length === 0 || host.length > MAX_HOST || !/^[\x21-\x7e]+$/.test(host) || host.includes('/')) {
    throw new MooncakeError(code, `${where}: ip_or_host_name must be a host name or IP address, got ${JSON.stringify(typeof host === 'string' ? host.slice(0, 80) : host)}`);
  }
}
