/**
 * Where a peer is: its segment descriptor and the address of its data listener, found through the
 * metadata store (`mooncake/ram/<name>` + `mooncake/rpc_meta/<name>`) or, in P2P mode, by asking the
 * peer over its handshake port. The descriptor is parsed here once, for routing only (its name and data
 * host); the native engine validates the whole of it and answers with what it learned (openSegment).
 */
import * as dns from 'node:dns';
import * as net from 'node:net';
import { MooncakeError } from '../errors';
import { HandshakeType, RawJson, exchange, probe } from '../handshake';
import { rpcMetaKey, segmentKey } from '../metadata/keys';
import { decodeRpcMeta } from '../metadata/rpc-meta';
import type { MetadataStore } from '../metadata/store';

/** A peer's descriptor (JSON text) and the numeric address of its data listener. */
export interface ResolvedSegment {
  descriptor: string;
  ip: string;
  /** The peer's handshake port; 0 when unknown. */
  rpcPort: number;
}

/**
 * Finds peer `name`: in the store, or (no store: P2P mode, where the name is the peer's `ip:rpc_port`)
 * from the peer itself, which is sent `ownDescriptor` in exchange.
 */
export async function resolveSegment(name: string, store: MetadataStore | undefined, ownDescriptor: () => string): Promise<ResolvedSegment> {
  if (!store) {
    const { host, port } = splitHostPort(name);
    const ip = await lookupIp(host);
    const reply = await exchange(ip, port, HandshakeType.Metadata, new RawJson(ownDescriptor() || '{}'));
    if (reply.value === null) {
      throw new MooncakeError('SEGMENT_NOT_FOUND', `${name} answered the P2P handshake without a descriptor (is it in P2PHANDSHAKE mode?)`, { details: { name } });
    }
    const { dataHost } = routeOf(reply.text, name);
    return { descriptor: reply.text, ip: dataHost ? await lookupIp(dataHost) : ip, rpcPort: port };
  }
  const key = segmentKey(name);
  const descriptor = await store.get(key);
  if (descriptor === undefined) throw new MooncakeError('SEGMENT_NOT_FOUND', `no segment named '${name}' in ${store.url} (key ${key})`, { details: { name, key } });
  const route = routeOf(descriptor, name);
  if (route.name === undefined) throw new MooncakeError('MALFORMED_JSON', `the descriptor of '${name}' has no name`, { details: { name, key } });
  const rkey = rpcMetaKey(route.name);
  const rpcText = await store.get(rkey);
  if (rpcText === undefined) throw new MooncakeError('SEGMENT_NOT_FOUND', `segment '${name}' has no rpc_meta entry (key ${rkey})`, { details: { name, key: rkey } });
  const rpc = decodeRpcMeta(rpcText, `'${route.name}' (key ${rkey})`);
  // Upstream 0.3.13+ publishes the data listener's host; older peers share rpc_meta's.
  return { descriptor, ip: await lookupIp(route.dataHost ?? rpc.ipOrHostName), rpcPort: rpc.rpcPort };
}

/** The descriptor's routing fields: its segment name and its data listener's host (non-empty strings). */
function routeOf(text: string, name: string): { name?: string; dataHost?: string } {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new MooncakeError('MALFORMED_JSON', `the descriptor of '${name}' is not JSON`, { cause: err, details: { name } });
  }
  const o = v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  const str = (x: unknown): string | undefined => (typeof x === 'string' && x !== '' ? x : undefined);
  return { name: str(o.name), dataHost: str(o.tcp_data_host) };
}

/** `host` as it goes before `:port` in an endpoint: IPv6 addresses in brackets. */
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

/** A numeric address for `host` (DNS when it is a name). */
export async function lookupIp(host: string): Promise<string> {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (net.isIP(h)) return h;
  try {
    return (await dns.promises.lookup(h)).address;
  } catch (err) {
    throw new MooncakeError('DNS', `cannot resolve ${h}`, { cause: err });
  }
}

/** An rpc_meta entry is stale when nothing answers a handshake probe at its address. */
export async function staleRpcMeta(existing: string): Promise<boolean> {
  try {
    const m = decodeRpcMeta(existing); // unreadable: stale
    await probe(await lookupIp(m.ipOrHostName), m.rpcPort, { connectTimeoutMs: 1000, timeoutMs: 2000 });
    return false;
  } catch {
    return true;
  }
}
