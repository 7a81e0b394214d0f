import { MooncakeError } from '../errors';
import { MemoryRegion } from './memory';
import { Segment } from './segment';

/** One transfer inside a batch. */
export interface TransferRequest {
  /** Local memory: a registered region (plus `localOffset`), or an absolute address inside one. */
  local: MemoryRegion | bigint;
  /** Offset into `local` when it is a region. Default 0. */
  localOffset?: number;
  /** Absolute address in the peer (e.g. `segment.address(0, offset)`), as upstream's target_offset. */
  remote: bigint;
  /** Bytes to move; a positive safe integer. */
  length: number;
}

export type Opcode = 'read' | 'write';

/** A request of the lower-level batch API, which may mix directions and segments. */
export interface BatchRequest extends TransferRequest {
  opcode: Opcode;
  segment: Segment;
}

export interface PackedRequests {
  opcodes: Uint8Array;
  segments: Int32Array;
  locals: BigUint64Array;
  remotes: BigUint64Array;
  lengths: Float64Array;
  bytes: number;
}

const MAX_REQUESTS = 1 << 20;

/** Validates requests in JS (precise messages, the offending index) and packs them as typed arrays. */
export function packRequests(owner: object, reqs: readonly (TransferRequest & { opcode?: Opcode; segment?: Segment })[], fixed?: { opcode: Opcode; segment: Segment }): PackedRequests {
  if (!Array.isArray(reqs)) throw new MooncakeError('INVALID_ARGUMENT', 'requests must be an array');
  const n = reqs.length;
  if (n === 0) throw new MooncakeError('INVALID_ARGUMENT', 'requests is empty');
  if (n > MAX_REQUESTS) throw new MooncakeError('TOO_MANY_REQUESTS', `at most ${MAX_REQUESTS} requests per call`);
  const p: PackedRequests = {
    opcodes: new Uint8Array(n),
    segments: new Int32Array(n),
    locals: new BigUint64Array(n),
    remotes: new BigUint64Array(n),
    lengths: new Float64Array(n),
    bytes: 0,
  };
  for (let i = 0; i < n; i++) {
    const r = reqs[i];
    const bad = (code: 'INVALID_ARGUMENT' | 'CLOSED' | 'SEGMENT_NOT_FOUND', m: string) => new MooncakeError(code, `request ${i}: ${m}`, { index: i });
    if (r === null || typeof r !== 'object') throw bad('INVALID_ARGUMENT', 'not an object');
    const { length } = r;
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length <= 0) throw bad('INVALID_ARGUMENT', `length must be a positive safe integer, got ${String(length)}`);
    if (typeof r.remote !== 'bigint' || r.remote <= 0n || r.remote >= 2n ** 64n) throw bad('INVALID_ARGUMENT', 'remote must be a positive 64-bit bigint address');
    let local: bigint;
    if (r.local instanceof MemoryRegion) {
      const region = r.local;
      if (region.owner !== owner) throw bad('INVALID_ARGUMENT', 'local region belongs to another engine');
      if (region.unregistered) throw bad('INVALID_ARGUMENT', 'local region was unregistered');
      if (region.detached) throw bad('INVALID_ARGUMENT', 'local region memory was detached (transferred); keep registered buffers on this thread');
      const off = r.localOffset ?? 0;
      if (!Number.isSafeInteger(off) || off < 0 || off + length > region.length) {
        throw bad('INVALID_ARGUMENT', `local range [${off}, ${off}+${length}) is outside the region of ${region.length} bytes`);
      }
      local = region.address + BigInt(off);
    } else if (typeof r.local === 'bigint') {
      if (r.localOffset !== undefined) throw bad('INVALID_ARGUMENT', 'localOffset needs a region as local');
      local = r.local;
      if (local <= 0n || local >= 2n ** 64n) throw bad('INVALID_ARGUMENT', 'local must be a positive 64-bit bigint address');
    } else {
      throw bad('INVALID_ARGUMENT', 'local must be a MemoryRegion or a bigint address');
    }
    const opcode = fixed?.opcode ?? r.opcode;
    if (opcode !== 'read' && opcode !== 'write') throw bad('INVALID_ARGUMENT', "opcode must be 'read' or 'write'");
    const segment = fixed?.segment ?? r.segment;
    if (!(segment instanceof Segment) || segment.owner !== owner) throw bad('INVALID_ARGUMENT', 'segment must be a Segment opened by this engine');
    if (segment.closed) throw bad('SEGMENT_NOT_FOUND', `segment ${segment.name} was closed`);
    p.opcodes[i] = opcode === 'write' ? 1 : 0;
    p.segments[i] = segment.handle;
    p.locals[i] = local;
    p.remotes[i] = r.remote;
    p.lengths[i] = length;
    p.bytes += length;
  }
  return p;
}

/** Absolute address ranges already in typed arrays (the KV layer's plans). */
export interface Ranges {
  locals: BigUint64Array;
  remotes: BigUint64Array;
  lengths: Float64Array;
  bytes: number;
}

/**
 * Packs ranges for one segment and direction without per-range JavaScript checks: the native engine
 * checks every range against the registered memory and the segment's buffers, and names the index.
 */
export function packRanges(segment: Segment, opcode: Opcode, ranges: Ranges): PackedRequests {
  const n = ranges.lengths.length;
  if (n === 0) throw new MooncakeError('INVALID_ARGUMENT', 'requests is empty');
  if (ranges.locals.length !== n || ranges.remotes.length !== n) throw new MooncakeError('INVALID_ARGUMENT', 'locals, remotes and lengths differ in length');
  if (segment.closed) throw new MooncakeError('SEGMENT_NOT_FOUND', `segment ${segment.name} was closed`);
  const opcodes = new Uint8Array(n);
  if (opcode === 'write') opcodes.fill(1);
  else if (opcode !== 'read') throw new MooncakeError('INVALID_ARGUMENT', "opcode must be 'read' or 'write'");
  return { opcodes, segments: new Int32Array(n).fill(segment.handle), locals: ranges.locals, remotes: ranges.remotes, lengths: ranges.lengths, bytes: ranges.bytes };
}
