/**
 * Deterministic KV contents for tests, demos and smoke checks: every (layer, K/V, block position, global
 * head, token) row gets bytes derived from a request seed, so a destination can verify exactly the heads
 * and blocks it received, whatever the TP sizes and block ids on either side.
 */
import type { KvLayout } from './layout';
import { requestHash } from './rank-map';

/** What the pattern functions need: a layout and host views of the tensors (KvCaches fits). */
export interface KvPatternTarget {
  readonly layout: KvLayout;
  tensorView(index: number): Buffer | undefined;
}

export interface KvPatternSpec {
  /** Seed of the request (e.g. `patternSeed(requestId)`). */
  seed: number;
  /** Local block ids to fill or check. */
  blockIds: readonly number[];
  /** Position of blockIds[0] in the request's block list (tail alignment), default 0. */
  firstPosition?: number;
  /** Global index of this rank's first head (heldHeads(...).start; 0 for MLA). */
  headStart: number;
  /** Only these tensors (default all). */
  tensors?: readonly number[];
}

export interface KvPatternCheck {
  bytes: number;
  /** Rows (token × head) that differ. */
  mismatches: number;
  first?: { tensor: number; blockId: number; position: number; head: number; token: number };
}

/** The pattern seed of a request id. */
export function patternSeed(requestId: string): number {
  return requestHash(requestId);
}

function mix(a: number, b: number): number {
  let h = Math.imul(a ^ Math.imul(b, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function rowSeed(seed: number, tensor: number, position: number, head: number, token: number): number {
  return mix(mix(mix(mix(seed, tensor + 1), position + 1), head + 1), token + 1);
}

function each(t: KvPatternTarget, s: KvPatternSpec, fn: (view: Buffer, off: number, h: number, where: NonNullable<KvPatternCheck['first']>) => boolean): void {
  const L = t.layout;
  const tensors = s.tensors ?? Array.from({ length: L.tensorCount }, (_, i) => i);
  for (const tensor of tensors) {
    const view = t.tensorView(tensor);
    if (!view) throw new Error(`tensor ${tensor} has no host view`);
    for (let i = 0; i < s.blockIds.length; i++) {
      const blockId = s.blockIds[i];
      const position = (s.firstPosition ?? 0) + i;
      const base = blockId * L.blockBytes;
      for (let head = 0; head < L.numHeads; head++) {
        for (let token = 0; token < L.blockSize; token++) {
          const off = base + L.tokenHeadOffset(token, head);
          const h = rowSeed(s.seed, tensor, position, s.headStart + head, token);
          if (!fn(view, off, h, { tensor, blockId, position, head: s.headStart + head, token })) return;
        }
      }
    }
  }
}

/** Writes the pattern into the blocks; returns the bytes written. */
export function fillKvPattern(t: KvPatternTarget, s: KvPatternSpec): number {
  const hb = t.layout.headBytes;
  let bytes = 0;
  each(t, s, (view, off, h) => {
    for (let j = 0; j < hb; j++) view[off + j] = (h + Math.imul(j, 0x9e3779b1)) >>> 24;
    bytes += hb;
    return true;
  });
  return bytes;
}

/** Compares the blocks with the pattern. */
export function checkKvPattern(t: KvPatternTarget, s: KvPatternSpec): KvPatternCheck {
  const hb = t.layout.headBytes;
  const out: KvPatternCheck = { bytes: 0, mismatches: 0 };
  each(t, s, (view, off, h, where) => {
    for (let j = 0; j < hb; j++) {
      if (view[off + j] !== (h + Math.imul(j, 0x9e3779b1)) >>> 24) {
        out.mismatches++;
        out.first ??= where;
        break;
      }
    }
    out.bytes += hb;
    return true;
  });
  return out;
}
