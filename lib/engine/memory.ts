import { MooncakeError } from '../errors';

/** Where memory lives: `cpu:<numa>`, `npu:<device>`, `cuda:<device>` or `*` (upstream's location strings). */
export type MemoryLocation = string;

/** Memory to register: JS memory (kept referenced while registered), or a range the caller owns. */
export type MemoryInput = ArrayBuffer | ArrayBufferView | { address: bigint; length: number };

export interface RegisterOptions {
  /** Upstream location string; it does not change the TCP wire. Default `cpu:0`. */
  location?: MemoryLocation;
  /** When false, peers cannot read or write the region (it can still be a local source or sink). */
  remoteAccessible?: boolean;
}

/**
 * A registered range of local memory. JS memory passed to `registerMemory` stays referenced (and so
 * alive) until the region is unregistered; engine-allocated memory (`allocateManagedBuffer`) lives in
 * pages the engine owns.
 */
export class MemoryRegion {
  /** Made by `TransferEngine.registerMemory` and its siblings, not by callers. */
  constructor(
    /** @internal */ readonly owner: object,
    readonly address: bigint,
    readonly length: number,
    readonly location: MemoryLocation,
    /**
     * The JS view over the memory, when it is host memory JS can see (undefined for device memory, and
     * for managed memory larger than the biggest Buffer this Node makes).
     */
    readonly buffer: Buffer | undefined,
    private readonly source: ArrayBuffer | ArrayBufferView | undefined,
    private readonly release: (region: MemoryRegion) => Promise<void>,
  ) {}

  private released = false;

  /** The device index for `npu:N` memory, else undefined. */
  get device(): number | undefined {
    const m = /^npu:(\d+)$/.exec(this.location);
    return m ? Number(m[1]) : undefined;
  }

  /** True once unregistered. */
  get unregistered(): boolean {
    return this.released;
  }

  /** True when the JS memory behind the region was detached (transferred to another thread). */
  get detached(): boolean {
    const s = this.source;
    if (s === undefined) return false;
    return (ArrayBuffer.isView(s) ? s.byteLength : (s as ArrayBuffer).byteLength) === 0;
  }

  /** Absolute address of `offset` inside the region, after bounds checks. */
  at(offset: number, length = 1): bigint {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0 || offset + length > this.length) {
      throw new MooncakeError('INVALID_ARGUMENT', `range [${offset}, ${offset}+${length}) is outside the region of ${this.length} bytes`);
    }
    return this.address + BigInt(offset);
  }

  /** Unregisters the region (refused with REGION_BUSY while a transfer uses it). */
  async unregister(): Promise<void> {
    await this.release(this);
  }

  private disposing: Promise<void> | undefined;

  /**
   * `await using region = await engine.registerMemory(...)`: unregisters the region when the scope ends.
   * Idempotent: a region already unregistered (or whose engine is closed) is left as it is.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.released) return;
    this.disposing ??= this.release(this).catch((e: unknown) => {
      this.disposing = undefined; // a busy region can be disposed again once its transfers are done
      throw e;
    });
    await this.disposing;
  }

  /** @internal */
  markReleased(): void {
    this.released = true;
  }
}

const DEVICE_ALIGNMENT = 2n * 1024n * 1024n;

/** A registration request, checked: JS memory or an owned address range, with its location. */
export type Registration = { location: MemoryLocation; remote: boolean } & (
  | { view: ArrayBuffer | ArrayBufferView }
  | { address: bigint; length: number }
);

/** Checks what `registerMemory` was handed (INVALID_ARGUMENT naming what is wrong). */
export function checkRegistration(memory: MemoryInput, options: RegisterOptions): Registration {
  const location = options.location ?? 'cpu:0';
  const remote = options.remoteAccessible ?? true;
  if (typeof location !== 'string' || location === '') throw new MooncakeError('INVALID_ARGUMENT', 'location must be a non-empty string');
  const address = memory !== null && typeof memory === 'object' && 'address' in memory ? (memory as { address: unknown }).address : undefined;
  if (/^npu:/.test(location)) {
    // Ascend transports need 2 MiB-aligned device regions (allocateDeviceMemory guarantees it).
    if (typeof address !== 'bigint') throw new MooncakeError('INVALID_ARGUMENT', 'npu memory is registered as { address, length } (or allocated with allocateDeviceMemory)');
    if (address % DEVICE_ALIGNMENT !== 0n) throw new MooncakeError('INVALID_ARGUMENT', `npu memory must start on a 2 MiB boundary (0x${address.toString(16)} does not)`);
  }
  if (memory instanceof ArrayBuffer || ArrayBuffer.isView(memory)) return { location, remote, view: memory };
  if (typeof address === 'bigint') {
    const { length } = memory as { length: unknown };
    if (!Number.isSafeInteger(length) || (length as number) <= 0) throw new MooncakeError('INVALID_ARGUMENT', 'length must be a positive safe integer');
    return { location, remote, address, length: length as number };
  }
  throw new MooncakeError('INVALID_ARGUMENT', 'memory must be a Buffer, TypedArray, ArrayBuffer, DataView or { address: bigint, length }');
}

/** A size to allocate: a positive safe integer (INVALID_ARGUMENT otherwise). */
export function checkSize(size: number): number {
  if (!Number.isSafeInteger(size) || size <= 0) throw new MooncakeError('INVALID_ARGUMENT', `size must be a positive safe integer, got ${String(size)}`);
  return size;
}
