/**
 * Deterministic KV contents for tests, demos and smoke checks: every (layer, K/V, block position, global
 * head, token) row gets bytes derived from a request seed, so a destination can verify exactly the heads
 * and blocks it received, whatever the TP sizes and block ids on either side.
 *
 * A row of `headBytes` is an 8-byte header (two 32-bit hashes of the row's coordinates) followed by one
 * byte value derived from the hash; a row landing in the wrong place, torn or shifted shows up as a
 * mismatch. The tail is written with Buffer.fill and compared with Buffer.equals, so checking gigabytes in a
 * demo stays cheap.
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

function each(t: KvPatternTarget, s: KvPatternSpec, fn: (view: Buffer, off: number, hb: number, h: number, where: () => NonNullable<KvPatternCheck['first']>) => void): void {
  const L = t.layout;
  const tensors = s.tensors ?? Array.from({ length: L.tensorCount }, (_, i) => i);
  for (const tensor of tensors) {
    const view = t.tensorView(tensor);
    if (!view) throw new Error(`tensor ${tensor} has no host view`);
    const ht = mix(s.seed, tensor + 1);
    for (let i = 0; i < s.blockIds.length; i++) {
      const blockId = s.blockIds[i];
      const position = (s.firstPosition ?? 0) + i;
      const base = blockId * L.tensorBlockBytes(tensor);
      const hp = mix(ht, position + 1);
      for (let head = 0; head < L.numHeads; head++) {
        const hh = mix(hp, s.headStart + head + 1);
        for (let token = 0; token < L.blockSize; token++) {
          const off = L.ropeBytes > 0 ? base + (token * L.numHeads + head) * L.tensorHeadBytes(tensor) : base + L.tokenHeadOffset(token, head);
          fn(view, off, L.tensorHeadBytes(tensor), mix(hh, token + 1), () => ({ tensor, blockId, position, head: s.headStart + head, token }));
        }
      }
    }
  }
}

const HEADER = 8;

/** Writes the pattern into the blocks; returns the bytes written. */
export function fillKvPattern(t: KvPatternTarget, s: KvPatternSpec): number {
  let bytes = 0;
  each(t, s, (view, off, hb, h) => {
    if (hb >= HEADER) {
      view.writeUInt32LE(h, off);
      view.writeUInt32LE(mix(h, 0x5bd1e995), off + 4);
      if (hb > HEADER) view.fill(h >>> 24, off + HEADER, off + hb);
    } else {
      for (let j = 0; j < hb; j++) view[off + j] = (h >>> (j * 8)) & 0xff;
    }
    bytes += hb;
  });
  return bytes;
}

/** Compares the blocks with the pattern. */
export function checkKvPattern(t: KvPatternTarget, s: KvPatternSpec): KvPatternCheck {
  const tails = new Map<number, Buffer[]>();
  const out: KvPatternCheck = { bytes: 0, mismatches: 0 };
  each(t, s, (view, off, hb, h, where) => {
    let bad: boolean;
    if (hb >= HEADER) {
      bad = view.readUInt32LE(off) !== h || view.readUInt32LE(off + 4) !== mix(h, 0x5bd1e995);
      if (!bad && hb > HEADER) {
        const v = h >>> 24;
        const byWidth = tails.get(hb) ?? (tails.set(hb, []), tails.get(hb)!);
        const tail = (byWidth[v] ??= Buffer.alloc(hb - HEADER, v));
        bad = tail.compare(view, off + HEADER, off + hb) !== 0;
      }
    } else {
      bad = false;
      for (let j = 0; j < hb && !bad; j++) bad = view[off + j] !== ((h >>> (j * 8)) & 0xff);
    }
    if (bad) {
      out.mismatches++;
      out.first ??= where();
    }
    out.bytes += hb;
  });
  return out;
}
