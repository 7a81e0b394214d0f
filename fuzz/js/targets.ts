/**
 * Fuzz targets for the TypeScript parsers. Each gets raw bytes and throws only when a property breaks;
 * the errors the code is documented to throw for bad input are caught here.
 *
 *   handshake       lib/handshake/framing.ts: the incremental FrameDecoder fed the input in chunks,
 *                   checked against a one-shot decode; every frame re-encodes to its own bytes, and its
 *                   JSON goes through the handshake_json properties.
 *   handshake_json  lib/handshake/json.ts: parseJson accepts or throws MALFORMED_JSON; what it accepts
 *                   survives stringifyFast -> parseJson unchanged (bigints, -0, __proto__ keys
 *                   included), and stringifyFast's output is a fixed point.
 *   kv_config       lib/kv/config.ts: parseKvTransferConfig / parseMooncakeConfig (byte 0 't' or 'm';
 *                   anything else: both) on the text and on the objects JSON.parse and the handshake
 *                   reader make of it. Only INVALID_CONFIG may escape; whatever is accepted satisfies
 *                   the documented constraints, and the text and object forms agree.
 *   rpc_meta        lib/metadata/rpc-meta.ts: decodeRpcMeta, the engine's reader of every peer's
 *                   rpc_meta entry, and encodeRpcMeta, its writer. Only MALFORMED_JSON may escape; an
 *                   accepted value is exactly what the text's object holds (a usable host, a port in
 *                   1-65535); encode(decode(x)) decodes to the same value and encode is a fixed point.
 */
import { MooncakeError } from '../../lib/errors';
import { decodeFrames, encodeFrame, FrameDecoder, type Frame, isHandshakeType, LENGTH_BYTES } from '../../lib/handshake/framing';
import { isJsonObject, parseJson, stringifyFast, type JsonValue } from '../../lib/handshake/json';
import { decodeRpcMeta, encodeRpcMeta } from '../../lib/metadata/rpc-meta';
import {
  KV_CONNECTORS,
  KV_ROLES,
  METADATA_BACKENDS,
  MOONCAKE_PROTOCOLS,
  metadataConnectionString,
  parseKvTransferConfig,
  parseMooncakeConfig,
  type KvTransferConfig,
  type MooncakeConfig,
} from '../../lib/kv/config';

export interface Target {
  fn: (data: Buffer) => void;
  /** Tokens the mutator may insert (quoted ones also serve as JSON keys and string values). */
  dict: string[];
  /** Set for targets whose input is JSON text after this many bytes: enables JSON-aware mutations. */
  jsonPrefix?: number;
}

class PropertyError extends Error {
  override name = 'PropertyError';
}

function check(cond: unknown, what: string): asserts cond {
  if (!cond) throw new PropertyError(what);
}

/** Rethrows anything but a MooncakeError with one of `codes`. */
function expectCode(err: unknown, codes: string[], where: string): MooncakeError {
  if (err instanceof MooncakeError && codes.includes(err.code)) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  e.message = `${where}: unexpected ${e.name}: ${e.message}`;
  throw e;
}

// ---------------------------------------------------------------------------------------------

/** Deep equality for parsed JSON: same types, Object.is on numbers (so -0 stays -0), own keys only. */
function sameJson(a: JsonValue, b: JsonValue): boolean {
  if (typeof a !== typeof b) return false;
  if (typeof a === 'number') return Object.is(a, b);
  if (typeof a === 'bigint' || typeof a === 'string' || typeof a === 'boolean') return a === b;
  if (a === null || b === null) return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => sameJson(x, b[i]!));
  }
  const bo = b as Record<string, JsonValue>;
  const ka = Object.keys(a);
  const kb = Object.keys(bo);
  if (ka.length !== kb.length) return false;
  // Parsed objects are plain, and a "__proto__" member is an own property, never the prototype.
  if (Object.getPrototypeOf(a) !== Object.prototype || Object.getPrototypeOf(bo) !== Object.prototype) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(bo, k) && sameJson((a as Record<string, JsonValue>)[k]!, bo[k]!));
}

function jsonRoundTrip(text: Buffer | string): void {
  let v: JsonValue;
  try {
    v = parseJson(text);
  } catch (err) {
    const e = expectCode(err, ['MALFORMED_JSON'], 'parseJson');
    const off = (e.details as { offset?: unknown } | undefined)?.offset;
    check(typeof off === 'number' && off >= 0, 'MALFORMED_JSON without a sane offset');
    return;
  }
  let once: string;
  try {
    once = stringifyFast(v);
  } catch (err) {
    // Only a value nested past the writer's limit may be refused; the reader has the same limit.
    expectCode(err, ['INVALID_ARGUMENT'], 'stringifyFast');
    throw new PropertyError('stringifyFast refused a value parseJson accepted');
  }
  check(once.endsWith('\n') && !once.slice(0, -1).includes('\n'), 'FastWriter output must be one line ending in \\n');
  // FastWriter escapes everything outside printable ASCII (DEL stays raw).
  check(/^[\x20-\x7f]*\n$/.test(once), `non-ASCII or control byte in writer output: ${JSON.stringify(once.slice(0, 200))}`);
  const w = parseJson(once);
  check(sameJson(v, w), `parse(write(v)) differs from v: ${once.slice(0, 300)}`);
  const twice = stringifyFast(w);
  check(once === twice, `writer is not a fixed point:\n${once.slice(0, 300)}\n${twice.slice(0, 300)}`);
}

// ---------------------------------------------------------------------------------------------

type Outcome = { frames: Frame[]; error?: string };

function decodeAll(chunks: Buffer[], maxLength: number): Outcome {
  const d = new FrameDecoder({ maxLength });
  const frames: Frame[] = [];
  try {
    for (const c of chunks) frames.push(...d.push(c));
    d.end();
    return { frames };
  } catch (err) {
    const e = expectCode(err, ['PROTOCOL_ERROR'], 'FrameDecoder');
    const reason = (e.details as { reason?: unknown } | undefined)?.reason;
    check(reason === 'zero-length' || reason === 'too-long' || reason === 'truncated', `unexpected PROTOCOL_ERROR reason ${String(reason)}`);
    // A broken decoder keeps throwing the same error.
    let again: unknown;
    try {
      d.push(Buffer.alloc(1));
    } catch (e2) {
      again = e2;
    }
    check(again === e, 'decoder did not stay broken after an error');
    return { frames, error: String(reason) };
  }
}

function handshake(data: Buffer): void {
  if (data.length < 1) return;
  // Byte 0: bits 0-2 chunk size, bit 3 a small receive limit (exercises 'too-long').
  const ctl = data[0]!;
  const stream = data.subarray(1);
  const maxLength = ctl & 8 ? 64 : 1 << 20;
  const sizes = [1, 2, 7, 8, 9, 13, 64, 1 << 20];
  const step = sizes[ctl & 7]!;
  const chunks: Buffer[] = [];
  for (let i = 0; i < stream.length; i += step) chunks.push(stream.subarray(i, i + step));

  const chunked = decodeAll(chunks, maxLength);
  // The same bytes in one piece decode to the same frames and the same error.
  let whole: Outcome;
  try {
    whole = { frames: decodeFrames(stream, { maxLength }) };
  } catch (err) {
    const e = expectCode(err, ['PROTOCOL_ERROR'], 'decodeFrames');
    whole = { frames: [], error: String((e.details as { reason?: unknown }).reason) };
  }
  check(chunked.error === whole.error, `chunked and whole decoding disagree: ${chunked.error} vs ${whole.error}`);
  if (whole.error === undefined) {
    check(chunked.frames.length === whole.frames.length, 'chunked and whole decoding found different frame counts');
  }
  // Frames found before an error: the whole-buffer decode stops at the first error too.
  let off = 0;
  for (let i = 0; i < chunked.frames.length; i++) {
    const f = chunked.frames[i]!;
    if (whole.error === undefined) {
      const g = whole.frames[i]!;
      check(f.type === g.type && f.oldProtocol === g.oldProtocol && f.payload.equals(g.payload), `frame ${i} differs between chunked and whole decoding`);
    }
    check(isHandshakeType(f.type), 'frame with an unknown type');
    check(!f.oldProtocol || f.type === 0, 'an untyped frame must be Connection');
    check(f.payload.length + (f.oldProtocol ? 0 : 1) <= maxLength, 'frame longer than the limit');
    // Re-encoding gives back exactly the bytes the frame came from.
    const enc = encodeFrame(f.type, f.payload, { oldProtocol: f.oldProtocol });
    check(enc.equals(stream.subarray(off, off + enc.length)), `frame ${i} does not re-encode to its own bytes`);
    off += enc.length;
    check(enc.length > LENGTH_BYTES, 'empty frame');
    jsonRoundTrip(f.payload);
  }
  if (chunked.error === undefined) check(off === stream.length, 'decoded frames do not account for every byte');
}

// ---------------------------------------------------------------------------------------------

function checkTransfer(c: KvTransferConfig): void {
  check(Object.prototype.hasOwnProperty.call(KV_CONNECTORS, c.connector), `accepted kv_connector ${JSON.stringify(c.connector)}`);
  check(c.mode === 'pull' || c.mode === 'push', `mode is ${String(c.mode)}`);
  check(KV_ROLES.includes(c.role), `role ${String(c.role)}`);
  check(typeof c.engineId === 'string' && c.engineId.length > 0 && c.engineId.length <= 128 && !c.engineId.includes('/'), 'engine_id');
  for (const p of [c.prefill, c.decode]) check(Number.isSafeInteger(p.dpSize) && p.dpSize >= 1 && Number.isSafeInteger(p.tpSize) && p.tpSize >= 1, 'parallel sizes');
  check(c.prefill.tpSize % c.decode.tpSize === 0, 'prefill tp_size must be a multiple of decode tp_size');
  if (c.kvPort !== undefined) {
    check(Number.isSafeInteger(c.kvPort) && c.kvPort >= 1, 'kv_port');
    const span = Math.max(c.prefill.dpSize * c.prefill.tpSize, c.decode.dpSize * c.decode.tpSize);
    check(c.kvPort + span - 1 <= 65535, 'kv_port + ranks - 1 must be a port');
  }
  check(c.kvRank === undefined || (Number.isSafeInteger(c.kvRank) && c.kvRank >= 0), 'kv_rank');
  check(Number.isSafeInteger(c.kvParallelSize) && c.kvParallelSize >= 1, 'kv_parallel_size');
  check(/^[a-z][a-z0-9_]*$/.test(c.bufferDevice), 'kv_buffer_device');
  check(Array.isArray(c.warnings) && c.warnings.every((w) => typeof w === 'string'), 'warnings');
}

function checkMooncake(c: MooncakeConfig): void {
  for (const u of [c.prefillUrl, c.decodeUrl]) {
    if (u !== undefined) check(typeof u.host === 'string' && u.host.length > 0 && Number.isInteger(u.port) && u.port >= 1 && u.port <= 65535, 'host:port');
  }
  check(c.metadataBackend === undefined || METADATA_BACKENDS.includes(c.metadataBackend), 'metadata_backend');
  check(MOONCAKE_PROTOCOLS.includes(c.protocol), 'protocol');
  check(c.metadataServer === undefined || (typeof c.metadataServer === 'string' && c.metadataServer.length > 0), 'metadata_server');
  check(c.deviceName === undefined || typeof c.deviceName === 'string', 'device_name');
  check(c.localHostname === undefined || typeof c.localHostname === 'string', 'local_hostname');
  if (c.metadataServer !== undefined || c.metadataBackend === 'p2phandshake') {
    const conn = metadataConnectionString(c);  // validated by the parser already: must not throw now
    check(typeof conn === 'string' && conn.length > 0, 'connection string');
  }
}

/** Runs `parse`; returns the result, or undefined after an INVALID_CONFIG error. */
function tryParse<T>(parse: () => T, where: string): T | undefined {
  try {
    return parse();
  } catch (err) {
    const e = expectCode(err, ['INVALID_CONFIG'], where);
    check(typeof e.message === 'string' && e.message.length > 0, 'INVALID_CONFIG without a message');
    return undefined;
  }
}

/** JSON-comparable form of a parse result (bigints as strings). */
function canon(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));
}

function kvConfig(data: Buffer): void {
  if (data.length < 1) return;
  const which = data[0] === 0x74 ? 't' : data[0] === 0x6d ? 'm' : 'both';
  const text = data.subarray(1).toString('utf8');
  const inputs: { form: string; input: string | object }[] = [{ form: 'text', input: text }];
  try {
    const o = JSON.parse(text) as unknown;
    if (o !== null && typeof o === 'object') inputs.push({ form: 'JSON.parse object', input: o });
  } catch {
    // not JSON: the text form must be rejected
  }
  try {
    const o = parseJson(text);
    if (o !== null && typeof o === 'object') inputs.push({ form: 'parseJson object', input: o });
  } catch {
    // idem
  }
  if (which !== 'm') {
    const results = inputs.map(({ form, input }) => {
      const r = tryParse(() => parseKvTransferConfig(input), `parseKvTransferConfig(${form})`);
      if (r) checkTransfer(r);
      return { form, r };
    });
    // JSON.parse's object is what the text form parses: the two must agree.
    if (results.length > 1 && results[1]!.form === 'JSON.parse object') {
      check(canon(results[0]!.r) === canon(results[1]!.r), 'parseKvTransferConfig: text and object forms disagree');
    }
  }
  if (which !== 't') {
    const results = inputs.map(({ form, input }) => {
      const r = tryParse(() => parseMooncakeConfig(input), `parseMooncakeConfig(${form})`);
      if (r) checkMooncake(r);
      return { form, r };
    });
    if (results.length > 1 && results[1]!.form === 'JSON.parse object') {
      check(canon(results[0]!.r) === canon(results[1]!.r), 'parseMooncakeConfig: text and object forms disagree');
    }
  }
}

// ---------------------------------------------------------------------------------------------

function rpcMeta(data: Buffer): void {
  const text = data.toString('utf8');
  let m;
  try {
    m = decodeRpcMeta(text, 'fuzz');
  } catch (err) {
    expectCode(err, ['MALFORMED_JSON'], 'decodeRpcMeta');
    return;
  }
  // What was accepted is what the object says, within the rules.
  check(typeof m.ipOrHostName === 'string' && /^[\x21-\x7e]{1,255}$/.test(m.ipOrHostName) && !m.ipOrHostName.includes('/'), `accepted host ${JSON.stringify(m.ipOrHostName)}`);
  check(Number.isInteger(m.rpcPort) && m.rpcPort >= 1 && m.rpcPort <= 65535, `accepted port ${m.rpcPort}`);
  const v = parseJson(text);
  check(isJsonObject(v), 'accepted a non-object');
  const o = v as Record<string, JsonValue>;
  check(o.ip_or_host_name === m.ipOrHostName, 'host differs from the text');
  check(Number(o.rpc_port) === m.rpcPort, 'port differs from the text');
  const once = encodeRpcMeta(m);
  check(once === `{"ip_or_host_name":${JSON.stringify(m.ipOrHostName)},"rpc_port":${m.rpcPort}}`, `unexpected encoding ${once}`);
  const back = decodeRpcMeta(once);
  check(back.ipOrHostName === m.ipOrHostName && back.rpcPort === m.rpcPort, 'decode(encode(m)) differs from m');
  check(encodeRpcMeta(back) === once, 'encodeRpcMeta is not a fixed point');
}

// ---------------------------------------------------------------------------------------------

const JSON_DICT = ['{', '}', '[', ']', '"', ':', ',', 'true', 'false', 'null', '\\u', '\\ud83d\\ude00', '\\ud800', '\\"', '\\\\', '-0', '1e400', '-1e+9999', '0.1', '9007199254740993', '-9223372036854775808', '18446744073709551616', '"__proto__"', '"constructor"', '\ufeff', '\n', ' '];

export const TARGETS: Record<string, Target> = {
  rpc_meta: {
    fn: rpcMeta,
    jsonPrefix: 0,
    dict: [...JSON_DICT, '"ip_or_host_name"', '"rpc_port"', '"127.0.0.1"', '"::1"', '"[::1]"', '"a/b"', '"a b"', '""', '0', '1', '65535', '65536', '15001.0', '1e3', '-1', '"15001"'],
  },
  handshake: { fn: handshake, dict: [...JSON_DICT, '\x00\x00\x00\x00\x00\x00\x00', '\x03{}\n'] },
  handshake_json: { fn: (d) => jsonRoundTrip(d), dict: JSON_DICT, jsonPrefix: 0 },
  kv_config: {
    fn: kvConfig,
    jsonPrefix: 1,
    dict: [
      ...JSON_DICT,
      '"kv_connector"', '"kv_role"', '"kv_port"', '"engine_id"', '"kv_rank"', '"kv_parallel_size"', '"kv_buffer_device"',
      '"kv_connector_extra_config"', '"prefill"', '"decode"', '"dp_size"', '"tp_size"', '"pp_size"', '"kv_buffer_size"', '"kv_ip"',
      '"MooncakeConnectorV1"', '"MooncakeConnector"', '"MooncakeLayerwiseConnector"', '"kv_producer"', '"kv_consumer"', '"kv_both"',
      '"prefill_url"', '"decode_url"', '"metadata_backend"', '"metadata_server"', '"protocol"', '"device_name"', '"local_hostname"',
      '"http"', '"etcd"', '"redis"', '"p2phandshake"', '"P2PHANDSHAKE"', '"tcp"', '"ascend"', '"[::1]:8080"', '"127.0.0.1:65535"',
      '"etcd://127.0.0.1:2379"', '"redis://127.0.0.1:6379"', '"http://127.0.0.1:8080/metadata"', '"toString"', '"hasOwnProperty"', '65536', '" 7 "',
    ],
  },
};
