/**
 * The memory behind a rank's KV caches: a few large regions registered once with the engine, and where
 * each (layer, K/V) tensor lives inside them.
 */
import { MooncakeError } from '../errors';
import type { TransferEngine } from '../engine';
import { MemoryRegion } from '../engine/memory';
import type { KvLayout, KvTensorKind } from './layout';

/**
 * Memory for caches: host memory JS can see, memory the caller owns by address (device memory), or a region
 * this rank's engine already registered (e.g. from `engine.allocateDeviceMemory('npu:0', size)`), which is
 * used as is.
 */
export type KvRegionInput = Buffer | Uint8Array | { address: bigint; length: number } | MemoryRegion;

export interface KvCachesInput {
  /** The regions, registered in one metadata update. Keep them few (HCCL/ADXL cap region counts). */
  regions: readonly KvRegionInput[];
  /**
   * Where each tensor starts, in tensor order (layer-major; K then V): a region index and a byte offset.
   * Default: tensors packed back to back, filling the regions in order.
   */
  tensors?: readonly { region: number; offset: number }[];
  /** Location string for registration (default 'cpu:0'; e.g. 'npu:0' for device memory). */
  location?: string;
}

/** Largest host region allocated by default (tensors never straddle regions). */
export const DEFAULT_MAX_REGION_BYTES = 1 << 30;

/** Host memory for a layout: whole tensors packed into as few Buffers of at most `maxRegionBytes` as possible. */
export function allocateHostCaches(layout: KvLayout, maxRegionBytes = DEFAULT_MAX_REGION_BYTES): KvCachesInput {
  const sizes: number[] = [];
  for (let t = 0; t < layout.tensorCount; t++) {
    const n = layout.tensorSize(t);
    if (sizes.length > 0 && sizes[sizes.length - 1] + n <= maxRegionBytes) sizes[sizes.length - 1] += n;
    else sizes.push(n);
  }
  return { regions: sizes.map((n) => Buffer.alloc(n)) };
}

function tensorPlacement(layout: KvLayout, input: KvCachesInput, lengths: number[]): { region: number; offset: number }[] {
  if (input.tensors !== undefined) {
    if (!Array.isArray(input.tensors) || input.tensors.length !== layout.tensorCount) {
      throw new MooncakeError('INVALID_CONFIG', `caches.tensors must list ${layout.tensorCount} tensors (one per layer${layout.tensorsPerLayer === 2 ? ' and K/V' : ''})`, {
        details: { field: 'caches.tensors' },
      });
    }
    const out = input.tensors.map((t, i) => {
      const ok = t !== null && typeof t === 'object' && Number.isSafeInteger(t.region) && t.region >= 0 && t.region < lengths.length &&
        Number.isSafeInteger(t.offset) && t.offset >= 0 && t.offset + layout.tensorSize(i) <= lengths[t.region];
      if (!ok) {
        throw new MooncakeError('INVALID_CONFIG', `caches.tensors[${i}] ${JSON.stringify(t)} does not fit a tensor of ${layout.tensorSize(i)} bytes in its region`, {
          details: { field: `caches.tensors[${i}]` },
        });
      }
      return { region: t.region, offset: t.offset };
    });
    const sorted = out.map((t, i) => ({ ...t, i })).sort((a, b) => a.region - b.region || a.offset - b.offset);
    for (let k = 1; k < sorted.length; k++) {
      const a = sorted[k - 1];
      const b = sorted[k];
      if (a.region === b.region && a.offset + layout.tensorSize(a.i) > b.offset) {
        throw new MooncakeError('INVALID_CONFIG', `caches.tensors[${a.i}] and caches.tensors[${b.i}] overlap`, { details: { field: 'caches.tensors' } });
      }
    }
    return out;
  }
  const out: { region: number; offset: number }[] = [];
  let region = 0;
  let offset = 0;
  for (let t = 0; t < layout.tensorCount; t++) {
    while (region < lengths.length && offset + layout.tensorSize(t) > lengths[region]) {
      region++;
      offset = 0;
    }
    if (region >= lengths.length) {
      const have = lengths.reduce((a, b) => a + b, 0);
      throw new MooncakeError('INVALID_CONFIG', `caches.regions (${have} bytes in ${lengths.length}) cannot hold ${layout.tensorCount} tensors of ${layout.tensorBytes} bytes${layout.ropeBytes > 0 ? ' (and rope tensors)' : ''}`, {
        details: { field: 'caches.regions' },
      });
    }
    out.push({ region, offset });
    offset += layout.tensorSize(t);
  }
  return out;
}

/** A rank's registered caches. */
export class KvCaches {
  private constructor(
    readonly layout: KvLayout,
    /** The registered regions (in input order). */
    readonly regions: readonly MemoryRegion[],
    /** Absolute address of every tensor, in tensor order. */
    readonly tensorAddresses: readonly bigint[],
    private readonly views: readonly (Buffer | undefined)[],
    /** The regions this object registered (and unregisters); regions passed in registered stay. */
    private readonly owned: readonly MemoryRegion[],
  ) {}

  /** Validates the placement and registers the regions with the engine (one metadata update). */
  static async register(engine: TransferEngine, layout: KvLayout, input: KvCachesInput | undefined): Promise<KvCaches> {
    const inp = input ?? allocateHostCaches(layout);
    if (inp === null || typeof inp !== 'object' || !Array.isArray(inp.regions) || inp.regions.length === 0) {
      throw new MooncakeError('INVALID_CONFIG', 'caches.regions must be a non-empty array of Buffers or { address, length }', { details: { field: 'caches.regions' } });
    }
    const lengths = inp.regions.map((r, i) => {
      if (r instanceof MemoryRegion) {
        if (r.owner !== engine || r.unregistered) {
          throw new MooncakeError('INVALID_CONFIG', `caches.regions[${i}] is a region of another engine, or unregistered`, { details: { field: `caches.regions[${i}]` } });
        }
        return r.length;
      }
      if (r instanceof Uint8Array) return r.byteLength;
      if (r !== null && typeof r === 'object' && typeof r.address === 'bigint' && Number.isSafeInteger(r.length) && r.length > 0) return r.length;
      throw new MooncakeError('INVALID_CONFIG', `caches.regions[${i}] must be a Buffer/Uint8Array or { address: bigint, length }`, { details: { field: `caches.regions[${i}]` } });
    });
    const placement = tensorPlacement(layout, inp, lengths);
    const fresh = inp.regions.filter((r): r is Exclude<KvRegionInput, MemoryRegion> => !(r instanceof MemoryRegion));
    const registered = fresh.length > 0 ? await engine.registerMemoryBatch(fresh, { location: inp.location ?? 'cpu:0' }) : [];
    let k = 0;
    const regions = inp.regions.map((r) => (r instanceof MemoryRegion ? r : registered[k++]));
    const addresses = placement.map((p) => regions[p.region].address + BigInt(p.offset));
    const views = placement.map((p, t) => regions[p.region].buffer?.subarray(p.offset, p.offset + layout.tensorSize(t)));
    return new KvCaches(layout, regions, addresses, views, registered);
  }

  /** The host view of a tensor (undefined for device memory). */
  tensorView(index: number): Buffer | undefined {
    return this.views[index];
  }

  /** The host view of one block of (layer, kind: 'k' | 'v' | 'kv' | 'latent' | 'rope') (undefined for device memory). */
  blockView(layer: number, kind: KvTensorKind, blockId: number): Buffer | undefined {
    const t = this.layout.tensorIndex(layer, kind);
    const v = this.views[t];
    const r = this.layout.blockRange(blockId, t);
    return v?.subarray(r.offset, r.offset + r.length);
  }

  /** Unregisters the regions it registered (best effort; the engine drops them anyway when it closes). */
  async unregister(): Promise<void> {
    for (const r of this.owned) {
      if (!r.unregistered) await r.unregister().catch(() => undefined);
    }
  }
}
