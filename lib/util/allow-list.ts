import * as net from 'node:net';
import { MooncakeError, type ErrorCode } from '../errors';

/**
 * An allow-list of numeric IP addresses, compared as addresses: any spelling of an IPv6 address
 * matches, and an IPv4-mapped peer (`::ffff:a.b.c.d`) matches its IPv4 entry. Returns undefined for
 * no list (or an empty one): everyone is allowed. Host names and anything else that is not a
 * numeric IP throw `code`, naming the entry (a silent refuse-all would be worse).
 */
export function allowList(peers: readonly unknown[] | undefined, what: string, code: ErrorCode = 'INVALID_CONFIG'): ((address: string | undefined) => boolean) | undefined {
  if (peers === undefined) return undefined;
  if (!Array.isArray(peers)) throw new MooncakeError(code, `${what} must be an array of numeric IP addresses`);
  const bad = peers.find((p) => typeof p !== 'string' || net.isIP(p) === 0);
  if (bad !== undefined) throw new MooncakeError(code, `${what} must be numeric IP addresses (no host names), got ${JSON.stringify(bad)}`);
  if (peers.length === 0) return undefined;
  const list = new net.BlockList();
  for (const p of peers as string[]) list.addAddress(p, net.isIPv6(p) ? 'ipv6' : 'ipv4');
  return (address) => {
    if (address === undefined) return false;
    const family = net.isIP(address);
    return family !== 0 && list.check(address, family === 6 ? 'ipv6' : 'ipv4');
  };
}
