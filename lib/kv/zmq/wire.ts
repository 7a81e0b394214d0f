/**
 * The ZMQ + msgpack wire of the vLLM-family side channels, loaded only when such a side channel is used:
 *
 * - `zeromq` (zeromq.js): libzmq itself, the library the Python connectors use through pyzmq, so REQ/ROUTER
 *   behaviour (ZMTP version negotiation, reconnects, the empty delimiter frame) is the same on both ends;
 * - `msgpackr`: encodes integer-keyed `Map`s and int64 addresses (`bigint`) as msgspec expects, and bytes
 *   as msgpack `bin` (the message tags are bin, not str).
 *
 * Only the few socket calls used here are typed, so the package's declarations never name `zeromq`.
 */
import { MooncakeError } from '../../errors';
import { requireOptional } from '../../util/optional';

const FEATURE = 'a vLLM-compatible KV side channel';

/** The zeromq.js socket surface used here. */
export interface ZmqSocket {
  connect(address: string): void;
  bind(address: string): Promise<void>;
  send(message: Buffer | (Buffer | string)[]): Promise<void>;
  receive(): Promise<Buffer[]>;
  close(): void;
  readonly closed: boolean;
}

interface ZmqModule {
  Request: new (options?: Record<string, unknown>) => ZmqSocket;
  Router: new (options?: Record<string, unknown>) => ZmqSocket;
  Dealer: new (options?: Record<string, unknown>) => ZmqSocket;
}

interface PackrModule {
  Packr: new (options: Record<string, unknown>) => { pack(v: unknown): Buffer };
  Unpackr: new (options: Record<string, unknown>) => { unpack(b: Buffer | Uint8Array): unknown };
}

let zmqModule: ZmqModule | undefined;
let codec: { pack(v: unknown): Buffer; unpack(b: Buffer | Uint8Array): unknown } | undefined;

/** zeromq.js, or MISSING_DEPENDENCY naming it. */
export function zmq(): ZmqModule {
  zmqModule ??= requireOptional<ZmqModule>('zeromq', FEATURE);
  return zmqModule;
}

function msgpack(): NonNullable<typeof codec> {
  if (!codec) {
    const m = requireOptional<PackrModule>('msgpackr', FEATURE);
    const common = { useRecords: false, mapsAsObjects: false, int64AsType: 'bigint', variableMapSize: true, moreTypes: false };
    const packr = new m.Packr(common);
    const unpackr = new m.Unpackr(common);
    codec = { pack: (v) => packr.pack(v), unpack: (b) => unpackr.unpack(b) };
  }
  return codec;
}

/** msgpack bytes of `value`: Buffers become bin, Maps keep their (integer) keys, bigints are int64. */
export function pack(value: unknown): Buffer {
  return msgpack().pack(value);
}

/** Decodes msgpack; PROTOCOL_ERROR when it is not msgpack. Maps decode as Map, bin as Buffer. */
export function unpack(bytes: Buffer | Uint8Array): unknown {
  try {
    return msgpack().unpack(bytes);
  } catch (err) {
    throw new MooncakeError('PROTOCOL_ERROR', `not a msgpack message: ${(err as Error).message}`, { cause: err });
  }
}

/** `tcp://host:port` (IPv6 hosts bracketed). */
export function zmqAddress(host: string, port: number): string {
  return `tcp://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** A msgpack value as a safe integer, or undefined. */
export function asInt(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  if (typeof v === 'bigint' && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return undefined;
}

/** A msgpack value as a non-negative int64 address, or undefined (floats and strings are not addresses). */
export function asAddress(v: unknown): bigint | undefined {
  if (typeof v === 'bigint') return v >= 0n ? v : undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  return undefined;
}

/** `v` as a plain object when it is a msgpack map with string keys. */
export function asRecord(v: unknown): Record<string, unknown> | undefined {
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of v) {
      if (typeof k !== 'string') return undefined;
      o[k] = x;
    }
    return o;
  }
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v)) return v as Record<string, unknown>;
  return undefined;
}

/** The first element of a side-channel message when it is a bin tag (a str tag is not accepted, as upstream). */
export function messageTag(msg: unknown): string | undefined {
  if (!Array.isArray(msg) || msg.length === 0) return undefined;
  const t = msg[0] as unknown;
  return Buffer.isBuffer(t) || t instanceof Uint8Array ? Buffer.from(t).toString('latin1') : undefined;
}
