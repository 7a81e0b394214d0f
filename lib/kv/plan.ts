/**
 * Turns "these blocks, these heads, from that rank" into one batch of transfer requests (one batch per
 * request and peer): for every tensor, every run of block ids that are consecutive on both sides, and every
 * piece of a block the head slice covers. Whole-block copies of consecutive blocks are one range per tensor
 * (the common equal-TP case); head slices cost one range per block and piece.
 */
import { MooncakeError } from '../errors';
import { pairedRuns, type KvLayout, type PairedRun } from './layout';

/** One side of a transfer: its layout, tensor base addresses, block ids and the first head of the slice. */
export interface PlanSide {
  layout: KvLayout;
  /** Absolute address of every tensor, in tensor order. */
  tensors: readonly bigint[];
  blockIds: readonly number[];
  /** First head of the slice among this side's heads. */
  head: number;
}

/** An in-block piece: offsets from the local and the remote block start. */
export interface BlockPiece {
  local: number;
  remote: number;
  length: number;
}

/**
 * One batch of transfer requests, as the engine takes them: absolute local and remote addresses and
 * lengths in typed arrays (no object per range on the hot path; `requests` builds objects on demand).
 */
export interface TransferPlan {
  /** Absolute local addresses, one per request. */
  locals: BigUint64Array;
  /** Absolute remote addresses. */
  remotes: BigUint64Array;
  /** Bytes per request. */
  lengths: Float64Array;
  /** The requests as objects (for TransferEngine.read/write and inspection); built when first read. */
  readonly requests: { local: bigint; remote: bigint; length: number }[];
  /** For each request, the first (local, remote) block pair it carries (an index into the block lists)... */
  firstPair: Uint32Array;
  /** ...and how many consecutive pairs. */
  pairCount: Uint32Array;
  /** Runs of block ids consecutive on both sides. */
  runs: PairedRun[];
  bytes: number;
  /** True when whole consecutive blocks were merged into one range per tensor. */
  wholeBlocks: boolean;
}

/** A plan over typed arrays, with `requests` materialized only when someone reads it. */
export function makePlan(
  locals: BigUint64Array,
  remotes: BigUint64Array,
  lengths: Float64Array,
  firstPair: Uint32Array,
  pairCount: Uint32Array,
  runs: PairedRun[],
  bytes: number,
  wholeBlocks: boolean,
): TransferPlan {
  let objects: TransferPlan['requests'] | undefined;
  return {
    locals,
    remotes,
    lengths,
    firstPair,
    pairCount,
    runs,
    bytes,
    wholeBlocks,
    get requests() {
      objects ??= Array.from(lengths, (length, i) => ({ local: locals[i], remote: remotes[i], length }));
      return objects;
    },
  };
}

/** Which tensors a plan covers: [first, end) (default all; a layerwise push plans one layer's). */
export interface TensorRange {
  first: number;
  end: number;
}

/**
 * The pieces of a block that carry heads [local.head, +count) locally and [remote.head, +count) remotely,
 * merged where both sides are contiguous. Works for any mix of NHD/HND layouts.
 */
export function blockPieces(local: KvLayout, localHead: number, remote: KvLayout, remoteHead: number, count: number): BlockPiece[] {
  const hb = local.headBytes;
  // The common shapes without walking every (token, head): whole blocks, and head slices with the same
  // order inside the block on both sides (what the general merge below would find, computed directly).
  if (local.headLayout === remote.headLayout && hb === remote.headBytes && local.blockSize === remote.blockSize) {
    const all = localHead === 0 && remoteHead === 0 && count === local.numHeads && count === remote.numHeads;
    if (all) return [{ local: 0, remote: 0, length: local.blockBytes }];
    if (local.headLayout === 'HND') {
      return [{ local: local.tokenHeadOffset(0, localHead), remote: remote.tokenHeadOffset(0, remoteHead), length: count * local.blockSize * hb }];
    }
    return Array.from({ length: local.blockSize }, (_, t) => ({ local: local.tokenHeadOffset(t, localHead), remote: remote.tokenHeadOffset(t, remoteHead), length: count * hb }));
  }
  // Elementary (token, head) pieces in local byte order, then merged.
  const elems: BlockPiece[] = [];
  const byHeadFirst = local.headLayout === 'HND';
  const outer = byHeadFirst ? count : local.blockSize;
  const inner = byHeadFirst ? local.blockSize : count;
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const h = byHeadFirst ? o : i;
      const t = byHeadFirst ? i : o;
      elems.push({ local: local.tokenHeadOffset(t, localHead + h), remote: remote.tokenHeadOffset(t, remoteHead + h), length: hb });
    }
  }
  const out: BlockPiece[] = [];
  for (const e of elems) {
    const last = out[out.length - 1];
    if (last && last.local + last.length === e.local && last.remote + last.length === e.remote) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Builds the batch for moving `count` heads of the paired blocks between two ranks (of `tensors`, default all). */
export function planTransfer(local: PlanSide, remote: PlanSide, count: number, tensors?: TensorRange): TransferPlan {
  const L = local.layout;
  const R = remote.layout;
  const why = L.incompatibility(R);
  if (why) throw new MooncakeError('INVALID_CONFIG', `the peer's KV layout does not match: ${why}`, { details: { reason: why } });
  if (local.tensors.length !== L.tensorCount || remote.tensors.length !== R.tensorCount) {
    throw new MooncakeError('INVALID_ARGUMENT', 'tensor address lists do not match the layouts');
  }
  const first = tensors?.first ?? 0;
  const end = tensors?.end ?? L.tensorCount;
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(end) || first < 0 || end > L.tensorCount || first >= end) {
    throw new MooncakeError('INVALID_ARGUMENT', `tensor range [${first}, ${end}) is outside [0, ${L.tensorCount})`);
  }
  for (const id of local.blockIds) L.checkBlock(id);
  for (const id of remote.blockIds) R.checkBlock(id);
  if (local.head < 0 || local.head + count > L.numHeads || remote.head < 0 || remote.head + count > R.numHeads) {
    throw new MooncakeError('INVALID_ARGUMENT', `head slice [${local.head}|${remote.head}, +${count}) is outside the layouts`);
  }
  const runs = pairedRuns(local.blockIds, remote.blockIds);
  const pieces = blockPieces(L, local.head, R, remote.head, count);
  const whole = pieces.length === 1 && pieces[0].local === 0 && pieces[0].remote === 0 && pieces[0].length === L.blockBytes && L.blockBytes === R.blockBytes;
  const perTensor = whole ? runs.length : local.blockIds.length * pieces.length;
  const total = perTensor * (end - first);
  const locals = new BigUint64Array(total);
  const remotes = new BigUint64Array(total);
  const lengths = new Float64Array(total);
  const firstPair = new Uint32Array(total);
  const pairCount = new Uint32Array(total);
  let n = 0;
  let bytes = 0;
  for (let t = first; t < end; t++) {
    const lt = local.tensors[t];
    const rt = remote.tensors[t];
    // Whole blocks move per tensor (an MLA rope tensor has its own, smaller block); head slices are MHA's.
    // Offsets are computed as numbers (tensors are far below 2^53 bytes) and added to the bases once.
    const tbb = L.tensorBlockBytes(t);
    const rbb = R.tensorBlockBytes(t);
    for (let r = 0; r < runs.length; r++) {
      const run = runs[r];
      if (whole) {
        const length = run.count * tbb;
        locals[n] = lt + BigInt(run.local * tbb);
        remotes[n] = rt + BigInt(run.remote * rbb);
        lengths[n] = length;
        firstPair[n] = run.index;
        pairCount[n++] = run.count;
        bytes += length;
        continue;
      }
      for (let b = 0; b < run.count; b++) {
        const lb = (run.local + b) * tbb;
        const rb = (run.remote + b) * rbb;
        for (const p of pieces) {
          locals[n] = lt + BigInt(lb + p.local);
          remotes[n] = rt + BigInt(rb + p.remote);
          lengths[n] = p.length;
          firstPair[n] = run.index + b;
          pairCount[n++] = 1;
          bytes += p.length;
        }
      }
    }
  }
  return makePlan(locals, remotes, lengths, firstPair, pairCount, runs, bytes, whole);
}

/**
 * Indices (into the block lists) of the pairs a failed batch did not deliver, ascending. `failures` is the
 * engine's per-request code list (undefined entries succeeded); without it every pair failed.
 */
export function failedPairs(plan: TransferPlan, failures: readonly (string | undefined)[] | undefined): number[] {
  const bad = new Set<number>();
  const n = plan.lengths.length;
  const perRequest = failures && failures.length === n ? failures : undefined;
  for (let i = 0; i < n; i++) {
    if (perRequest && perRequest[i] === undefined) continue;
    for (let k = 0; k < plan.pairCount[i]; k++) bad.add(plan.firstPair[i] + k);
  }
  return [...bad].sort((a, b) => a - b);
}
