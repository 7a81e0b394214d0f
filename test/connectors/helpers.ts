/**
 * What the real-connector suites share: free port ranges for kv_port (vllm-ascend addresses rank r at
 * kv_port + r), Node ranks on the vllm-ascend side channel, and byte checks per layer, block and head.
 */
import { expect } from 'vitest';
import { KvConsumer, KvProducer, type KvLayoutSpec } from '../../lib';
import type { KvRankOptions } from '../../lib/kv/options';
import { freePortRange } from '../helpers/ports';
import type { Profile } from './peers/vllm-ascend-peer';

export { freePortRange };

export interface NodeRankSpec {
  profile: Profile;
  engineId: string;
  kvPort: number;
  prefillTp: number;
  decodeTp: number;
  tpRank: number;
  layout: KvLayoutSpec;
  totalKvHeads: number;
  extra?: Partial<KvRankOptions>;
}

function options(s: NodeRankSpec): KvRankOptions {
  return {
    engineId: s.engineId,
    sideChannel: 'vllm-ascend',
    vllmAscend: { profile: s.profile },
    kvPort: s.kvPort,
    host: '127.0.0.1',
    tpRank: s.tpRank,
    prefill: { dpSize: 1, tpSize: s.prefillTp },
    decode: { dpSize: 1, tpSize: s.decodeTp },
    layout: s.layout,
    totalKvHeads: s.totalKvHeads,
    ...s.extra,
  };
}

export const nodeProducer = (s: NodeRankSpec): Promise<KvProducer> => KvProducer.create(options(s));
export const nodeConsumer = (s: NodeRankSpec): Promise<KvConsumer> => KvConsumer.create(options(s));

/** One head of one token of a block: where it sits in an NHD block of `heads` heads. */
function headPiece(block: Buffer, token: number, head: number, heads: number, headBytes: number): Buffer {
  const o = (token * heads + head) * headBytes;
  return block.subarray(o, o + headBytes);
}

/**
 * Checks, for every (layer, K/V, block pair, global head, token), that the destination holds the source's
 * bytes. `src(layer, kind, block)` / `dst(...)` return whole blocks; `srcHead(g)` maps a global head to the
 * source rank's local head (and which source), the same for `dstHead`. Returns how many pieces matched.
 */
export function expectHeadsEqual(args: {
  layers: number;
  kinds: number;
  pairs: [number, number][];
  heads: number[];
  blockSize: number;
  headBytes: number;
  src: (layer: number, kind: number, block: number, head: number) => { block: Buffer; head: number; heads: number };
  dst: (layer: number, kind: number, block: number, head: number) => { block: Buffer; head: number; heads: number };
}): number {
  let n = 0;
  for (let l = 0; l < args.layers; l++) {
    for (let k = 0; k < args.kinds; k++) {
      for (const [sb, db] of args.pairs) {
        for (const g of args.heads) {
          const s = args.src(l, k, sb, g);
          const d = args.dst(l, k, db, g);
          for (let t = 0; t < args.blockSize; t++) {
            const want = headPiece(s.block, t, s.head, s.heads, args.headBytes);
            const got = headPiece(d.block, t, d.head, d.heads, args.headBytes);
            if (!want.equals(got)) {
              expect.fail(`layer ${l} ${k === 0 ? 'K' : 'V'} block ${sb}->${db} head ${g} token ${t}: ${got.toString('hex')} != ${want.toString('hex')}`);
            }
            n++;
          }
        }
      }
    }
  }
  return n;
}

/** Polls `f` every 50 ms until it returns true or `ms` pass. */
export async function eventually(f: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}
