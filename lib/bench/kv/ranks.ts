/**
 * The ranks one process of `bench kv` hosts for a case: every (dp, tp) rank of one side, each a
 * KvProducer or KvConsumer with its own engine and caches, as a serving instance has them; and the
 * pattern fill and check that prove a case moved the right bytes before it is timed.
 */
import { MooncakeError } from '../../errors';
import { KvConsumer } from '../../kv/consumer';
import type { KvRankOptions } from '../../kv/options';
import { checkKvPattern, fillKvPattern, patternSeed } from '../../kv/pattern';
import { KvProducer } from '../../kv/producer';
import { heldHeads } from '../../kv/rank-map';
import { engineIdOf, rankLayoutOf, slotBlocks, type KvCaseSpec, type KvSide } from './cases';

/** Where a side's ranks publish themselves and listen. */
export interface RankEnv {
  metadataServer: string;
  /** Address the rank engines bind to and advertise. */
  host: string;
  ioThreads?: number;
}

export type KvRank = KvProducer | KvConsumer;

export function totalKvHeads(spec: KvCaseSpec): number {
  return spec.model.attention === 'mla' ? 1 : spec.model.kvHeads;
}

function rankOptions(spec: KvCaseSpec, side: KvSide, dp: number, tp: number, env: RankEnv): KvRankOptions {
  const ascend = spec.sideChannel === 'vllm-ascend';
  return {
    engineId: engineIdOf(spec, side),
    dpRank: dp,
    tpRank: tp,
    prefill: spec.prefill,
    decode: spec.decode,
    layout: rankLayoutOf(spec, side),
    totalKvHeads: totalKvHeads(spec),
    host: env.host,
    engineOptions: { bindAddress: env.host, advertiseAddress: env.host, ...(env.ioThreads ? { ioThreads: env.ioThreads } : {}) },
    // A bench phase may keep many requests held or expected while earlier ones move.
    transferTimeoutMs: 300_000,
    abortTimeoutMs: 600_000,
    ...(ascend
      ? { sideChannel: 'vllm-ascend' as const, vllmAscend: { profile: '0.23' as const, dtypeBytes: spec.model.dtypeBytes }, kvPort: spec.kvPorts![side] }
      : { metadataServer: env.metadataServer }),
  };
}

/** Every rank of one side of a case: `ranks[dp][tp]`. */
export class RankGroup<R extends KvRank = KvRank> {
  private constructor(
    readonly spec: KvCaseSpec,
    readonly side: KvSide,
    readonly ranks: R[][],
  ) {}

  static async open(spec: KvCaseSpec, side: KvSide, env: RankEnv): Promise<RankGroup> {
    const { dpSize, tpSize } = spec[side];
    const ranks: KvRank[][] = [];
    try {
      for (let dp = 0; dp < dpSize; dp++) {
        const row: KvRank[] = [];
        ranks.push(row);
        for (let tp = 0; tp < tpSize; tp++) {
          const o = rankOptions(spec, side, dp, tp, env);
          row.push(side === 'prefill' ? await KvProducer.create(o) : await KvConsumer.create(o));
        }
      }
    } catch (err) {
      await Promise.allSettled(ranks.flat().map((r) => r.close()));
      throw err;
    }
    return new RankGroup(spec, side, ranks);
  }

  get producers(): KvProducer[][] {
    if (this.side !== 'prefill') throw new MooncakeError('INTERNAL', 'not a prefill group');
    return this.ranks as KvProducer[][];
  }

  get consumers(): KvConsumer[][] {
    if (this.side !== 'decode') throw new MooncakeError('INTERNAL', 'not a decode group');
    return this.ranks as KvConsumer[][];
  }

  /** The ranks of dp group `dp`. */
  dp(dp: number): R[] {
    const row = this.ranks[dp];
    if (!row) throw new MooncakeError('INVALID_ARGUMENT', `dp rank ${dp} is not hosted`);
    return row;
  }

  private headStart(tp: number): number {
    return heldHeads(this.spec.model.attention, totalKvHeads(this.spec), this.spec[this.side].tpSize, tp).start;
  }

  /** Writes the pattern of each slot into its blocks on every rank (prefill side). */
  fill(slots: readonly number[]): void {
    for (const row of this.ranks) {
      for (const r of row) {
        for (const s of slots) fillKvPattern(r.caches, { seed: patternSeed(`slot-${s}`), blockIds: slotBlocks(this.spec, this.side, s), headStart: this.headStart(r.tpRank) });
      }
    }
  }

  /** Checks each slot's blocks on every rank of dp group `dp` (decode side): bytes checked and mismatching rows. */
  check(dp: number, slots: readonly number[]): { bytes: number; mismatches: number } {
    let bytes = 0;
    let mismatches = 0;
    for (const r of this.dp(dp)) {
      for (const s of slots) {
        const c = checkKvPattern(r.caches, { seed: patternSeed(`slot-${s}`), blockIds: slotBlocks(this.spec, this.side, s), headStart: this.headStart(r.tpRank) });
        bytes += c.bytes;
        mismatches += c.mismatches;
      }
    }
    return { bytes, mismatches };
  }

  /** Zeroes each slot's blocks (decode side), so a check after a transfer proves that transfer. */
  clear(slots: readonly number[]): void {
    for (const row of this.ranks) {
      for (const r of row) {
        const L = r.layout;
        for (let t = 0; t < L.tensorCount; t++) {
          const view = r.caches.tensorView(t);
          if (!view) continue;
          const bb = L.tensorBlockBytes(t);
          for (const s of slots) for (const b of slotBlocks(this.spec, this.side, s)) view.fill(0, b * bb, (b + 1) * bb);
        }
      }
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.ranks.flat().map((r) => r.close()));
  }
}
