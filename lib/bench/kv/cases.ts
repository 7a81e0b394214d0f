/**
 * One `bench kv` case (a model, a prompt length, a parallel layout, a transfer mode) and what both
 * processes derive from it alike: block ids per request slot, rank layouts, engine ids, memory.
 *
 * Request k uses slot k mod slots (its own blocks on both sides, so requests in flight never share
 * blocks unless memory forced fewer slots than the concurrency), prefill dp rank k mod prefill dp and
 * decode dp rank k mod decode dp.
 */
import { MooncakeError } from '../../errors';
import { KvLayout, type KvHeadLayout } from '../../kv/layout';
import type { KvSideChannelName } from '../../kv/side-channel';
import { rankLayout, type KvModel } from './models';

export type KvTransferMode = 'pull' | 'push' | 'layerwise';
export const KV_TRANSFER_MODES: readonly KvTransferMode[] = ['pull', 'push', 'layerwise'];

export interface KvParallel {
  dpSize: number;
  tpSize: number;
}

/** Everything both sides need to build their ranks for a case (sent over the control connection). */
export interface KvCaseSpec {
  /** Unique in a run; part of the engine ids. */
  id: string;
  model: KvModel;
  promptTokens: number;
  /** Tokens per block. */
  blockSize: number;
  prefill: KvParallel;
  decode: KvParallel;
  headLayout: KvHeadLayout;
  transfer: KvTransferMode;
  /** Block sets per side (requests in flight at once, bounded by memory). */
  slots: number;
  /** 'contiguous': a request's blocks are consecutive on both sides; 'scattered': never (one range per block). */
  blocks: 'contiguous' | 'scattered';
  sideChannel: KvSideChannelName;
  /** vllm-ascend side channel: kv_port of each instance. */
  kvPorts?: { prefill: number; decode: number };
}

export type KvSide = 'prefill' | 'decode';

export function blocksPerRequest(c: KvCaseSpec): number {
  return Math.ceil(c.promptTokens / c.blockSize);
}

/** The block ids of `slot` on `side`. Scattered: descending on the prefill side, so no two pairs merge. */
export function slotBlocks(c: KvCaseSpec, side: KvSide, slot: number): number[] {
  const n = blocksPerRequest(c);
  const ids = Array.from({ length: n }, (_, i) => slot * n + i);
  return c.blocks === 'scattered' && side === 'prefill' ? ids.reverse() : ids;
}

export function rankLayoutOf(c: KvCaseSpec, side: KvSide): KvLayout {
  return KvLayout.from(rankLayout(c.model, c[side].tpSize, c.blockSize, blocksPerRequest(c) * c.slots, c.headLayout));
}

/** Bytes of KV caches a side's process holds (all its ranks). */
export function sideBytes(c: KvCaseSpec, side: KvSide): number {
  return rankLayoutOf(c, side).totalBytes * c[side].dpSize * c[side].tpSize;
}

export function engineIdOf(c: KvCaseSpec, side: KvSide): string {
  return `bench-${c.id}-${side}`;
}

/** The side that issues transfers (this process in loopback): decode pulls, prefill pushes. */
export function initiatorSide(c: KvCaseSpec): KvSide {
  return c.transfer === 'pull' ? 'decode' : 'prefill';
}

export function otherSide(s: KvSide): KvSide {
  return s === 'prefill' ? 'decode' : 'prefill';
}

/** The request id of request k of a phase. */
export function requestId(c: KvCaseSpec, phase: string, k: number): string {
  return `${c.id}-${phase}-${k}`;
}

/**
 * How many slots fit `maxBytes` per side (at least one, at most the concurrency); INVALID_CONFIG when one
 * request does not fit.
 */
export function slotsFor(c: Omit<KvCaseSpec, 'slots' | 'id'>, concurrency: number, maxBytes: number): number {
  const one = Math.max(sideBytes({ ...c, id: '', slots: 1 }, 'prefill'), sideBytes({ ...c, id: '', slots: 1 }, 'decode'));
  if (one > maxBytes) {
    throw new MooncakeError('INVALID_CONFIG', `one ${c.promptTokens}-token request of ${c.model.name} needs ${(one / 2 ** 30).toFixed(2)} GiB of KV caches per side, above --max-memory ${(maxBytes / 2 ** 30).toFixed(2)} GiB`, {
      details: { flag: '--max-memory' },
    });
  }
  return Math.max(1, Math.min(concurrency, Math.floor(maxBytes / one)));
}
