/**
 * Hold fences: how a consumer learns that the blocks it read were held for the whole read, so a pull that
 * raced a force-free (abort-timeout, release(), close) is reported as stale KV instead of success.
 *
 * A producer rank keeps one 32-bit counter per block in a small registered host region, its fence, which
 * peers can read (its address is in the rank's registry entry). A counter is odd while at least one hold
 * covers the block and even otherwise, and it is incremented at every change between the two: when the
 * first hold of a free block starts, and when the last hold of a block is released. The increment that
 * makes it even happens before the release is announced (`released`), so before the application can reuse
 * the block.
 *
 * A consumer reads the counters of the blocks it pulls before its data read starts and again after the
 * data read has completed. A block is intact when the first value is odd and the second equals it: the
 * block was held when the first read ran and never released until the second ran, so the data read, which
 * ran between them, saw only held contents. Anything else is stale (`STALE_KV`): the block was not held yet,
 * was released already, or was released (and maybe reused) during the read. Counters wrap at 2^32, which
 * keeps their parity; a block would have to be held and released 2^31 times during one pull to fool it.
 */
import { MooncakeError } from '../errors';
import type { TransferEngine } from '../engine';
import type { MemoryRegion } from '../engine/memory';
import type { Segment } from '../engine/segment';

/** Bytes per block in a fence. */
export const FENCE_BYTES = 4;

/** The producer side: the counters and how many holds cover each block. */
export class HoldFence {
  private readonly holds: Uint32Array;

  private constructor(private readonly region: MemoryRegion, private readonly view: Buffer, readonly numBlocks: number) {
    this.holds = new Uint32Array(numBlocks);
  }

  /** Allocates and registers the fence of a rank with `numBlocks` blocks (remote peers read it). */
  static async create(engine: TransferEngine, numBlocks: number): Promise<HoldFence> {
    const view = Buffer.alloc(numBlocks * FENCE_BYTES);
    const region = await engine.registerMemory(view);
    return new HoldFence(region, view, numBlocks);
  }

  /** Where peers read the counters: block b's is at address + 4 b (little-endian uint32). */
  get address(): bigint {
    return this.region.address;
  }

  /** The counter of one block (odd: held). */
  counter(block: number): number {
    return this.view.readUInt32LE(block * FENCE_BYTES);
  }

  private bump(block: number): void {
    const at = block * FENCE_BYTES;
    this.view.writeUInt32LE((this.view.readUInt32LE(at) + 1) >>> 0, at);
  }

  /** A hold of these blocks started (each block counted once however often it is listed). */
  acquire(blocks: readonly number[]): void {
    for (const b of new Set(blocks)) if (this.holds[b]++ === 0) this.bump(b);
  }

  /** A hold of these blocks ended: blocks no other hold covers become free (their counters even). */
  release(blocks: readonly number[]): void {
    for (const b of new Set(blocks)) {
      if (this.holds[b] === 0) continue;
      if (--this.holds[b] === 0) this.bump(b);
    }
  }

  async close(): Promise<void> {
    if (!this.region.unregistered) await this.region.unregister().catch(() => undefined);
  }
}

/** Values per scratch slot and slots per registered chunk of scratch memory. */
const SLOT_VALUES = 1024;
const SLOTS_PER_CHUNK = 64;

interface Slot {
  region: MemoryRegion;
  offset: number;
}

/**
 * The consumer side: reads a peer's counters for a set of blocks into private scratch memory (registered
 * once per 256 KiB chunk, not remote-accessible) and returns them.
 */
export class FenceReader {
  private readonly free: Slot[] = [];
  private readonly chunks: Promise<MemoryRegion>[] = [];

  constructor(private readonly engine: TransferEngine) {}

  private async take(n: number): Promise<Slot[]> {
    while (this.free.length < n) {
      const chunk = this.engine.registerMemory(Buffer.alloc(SLOTS_PER_CHUNK * SLOT_VALUES * FENCE_BYTES), { remoteAccessible: false });
      this.chunks.push(chunk);
      const region = await chunk;
      for (let i = 0; i < SLOTS_PER_CHUNK; i++) this.free.push({ region, offset: i * SLOT_VALUES * FENCE_BYTES });
    }
    return this.free.splice(this.free.length - n, n);
  }

  /**
   * The counters of `blocks` (sorted, distinct) in the fence at `fence` of `segment`, in the same order.
   * Runs of consecutive blocks are read as one range (split at scratch-slot boundaries).
   */
  async read(segment: Segment, fence: bigint, blocks: readonly number[], options: { timeoutMs: number; signal?: AbortSignal }): Promise<Uint32Array> {
    const slots = await this.take(Math.ceil(blocks.length / SLOT_VALUES));
    try {
      const requests: { local: MemoryRegion; localOffset: number; remote: bigint; length: number }[] = [];
      let i = 0;
      while (i < blocks.length) {
        // A run of consecutive blocks that stays inside one slot.
        let j = i + 1;
        while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && j % SLOT_VALUES !== 0) j++;
        const slot = slots[Math.floor(i / SLOT_VALUES)];
        requests.push({ local: slot.region, localOffset: slot.offset + (i % SLOT_VALUES) * FENCE_BYTES, remote: fence + BigInt(blocks[i] * FENCE_BYTES), length: (j - i) * FENCE_BYTES });
        i = j;
      }
      await this.engine.read(segment, requests, options);
      const out = new Uint32Array(blocks.length);
      for (let k = 0; k < blocks.length; k++) {
        const s = slots[Math.floor(k / SLOT_VALUES)];
        out[k] = s.region.buffer!.readUInt32LE(s.offset + (k % SLOT_VALUES) * FENCE_BYTES);
      }
      return out;
    } finally {
      this.free.push(...slots);
    }
  }

  /** Unregisters the scratch memory (the engine drops it anyway when it closes). */
  async close(): Promise<void> {
    const chunks = await Promise.allSettled(this.chunks);
    this.chunks.length = 0;
    this.free.length = 0;
    for (const c of chunks) if (c.status === 'fulfilled' && !c.value.unregistered) await c.value.unregister().catch(() => undefined);
  }
}

/**
 * Indices of the pairs whose block was not held for the whole read: `remote[i]` is pair i's block,
 * `blocks` the sorted distinct blocks whose counters `before` and `after` hold.
 */
export function stalePairs(remote: readonly number[], blocks: readonly number[], before: Uint32Array, after: Uint32Array): number[] {
  const at = new Map<number, number>();
  blocks.forEach((b, k) => at.set(b, k));
  const out: number[] = [];
  for (let i = 0; i < remote.length; i++) {
    const k = at.get(remote[i]);
    if (k === undefined || (before[k] & 1) === 0 || after[k] !== before[k]) out.push(i);
  }
  return out;
}

/** The sorted distinct block ids of a list. */
export function distinctSorted(ids: readonly number[]): number[] {
  return [...new Set(ids)].sort((a, b) => a - b);
}

export function staleError(requestId: string, segment: string, stale: number, total: number): MooncakeError {
  return new MooncakeError('STALE_KV', `${stale} of ${total} blocks of ${requestId} read from ${segment} were not held for the whole read (force-freed, released or not held yet): their contents may belong to another request`, {
    details: { requestId, segment, staleBlocks: stale },
  });
}
