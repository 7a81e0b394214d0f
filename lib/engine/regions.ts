/**
 * The engine's registered memory: registration of JS memory and owned ranges, engine-allocated host and
 * device memory, unregistration. A registration is published (the descriptor rewritten) before it
 * counts; if publishing fails it is undone, so a region either is published or does not exist.
 */
import { constants as bufferConstants } from 'node:buffer';
import { MooncakeError } from '../errors';
import { MemoryRegion, checkRegistration, checkSize, type MemoryInput, type RegisterOptions } from './memory';
import type { NativeEngine } from './native';

export interface RegionsOwner {
  native: NativeEngine;
  /** Throws CLOSED once the engine is closing. */
  assertOpen(): void;
  /** Rewrites this engine's published descriptor. */
  publish(): Promise<void>;
  /** What a region's `unregister()` calls. */
  release(region: MemoryRegion): Promise<void>;
}

export class Regions {
  private readonly byAddress = new Map<bigint, MemoryRegion>();

  constructor(
    private readonly engine: object,
    private readonly o: RegionsOwner,
  ) {}

  /** Registered regions, in registration order. */
  get list(): MemoryRegion[] {
    return [...this.byAddress.values()];
  }

  /** Registers each of `memories`, then publishes once; on any failure none stays registered. */
  async register(memories: readonly MemoryInput[], options: RegisterOptions): Promise<MemoryRegion[]> {
    const done: MemoryRegion[] = [];
    try {
      for (const m of memories) done.push(await this.registerOne(m, options));
    } catch (err) {
      for (const r of done) await this.drop(r);
      throw err;
    }
    return this.adopt(done);
  }

  async allocateManaged(size: number, options: RegisterOptions & { shareable?: boolean }): Promise<MemoryRegion> {
    this.o.assertOpen();
    checkSize(size);
    const location = options.location ?? 'cpu:0';
    const m = await this.o.native.allocateManaged(size, options.shareable ?? true, location);
    const view = m.buffer !== undefined && m.buffer.byteLength <= bufferConstants.MAX_LENGTH ? Buffer.from(m.buffer) : undefined;
    return (await this.adopt([this.region(m.address, size, location, view)]))[0];
  }

  async allocateDevice(location: string, size: number): Promise<MemoryRegion> {
    this.o.assertOpen();
    if (typeof location !== 'string' || !/^npu:\d+$/.test(location)) throw new MooncakeError('INVALID_ARGUMENT', `device location must look like 'npu:0', got '${String(location)}'`);
    checkSize(size);
    const m = await this.o.native.allocateDevice(location, size);
    return (await this.adopt([this.region(m.address, size, location)]))[0];
  }

  async unregister(region: MemoryRegion | bigint): Promise<void> {
    this.o.assertOpen();
    const address = typeof region === 'bigint' ? region : region.address;
    if (region instanceof MemoryRegion && region.owner !== this.engine) throw new MooncakeError('INVALID_ARGUMENT', 'the region belongs to another engine');
    await this.o.native.unregister(address);
    const r = this.byAddress.get(address);
    this.byAddress.delete(address);
    r?.markReleased();
    await this.o.publish();
  }

  async copyDevice(toDevice: boolean, region: MemoryRegion, offset: number, host: ArrayBufferView): Promise<void> {
    this.o.assertOpen();
    if (!(region instanceof MemoryRegion) || region.owner !== this.engine || region.device === undefined) {
      throw new MooncakeError('INVALID_ARGUMENT', 'region must be device memory registered with this engine');
    }
    if (region.unregistered) throw new MooncakeError('INVALID_ARGUMENT', 'the region was unregistered');
    if (!ArrayBuffer.isView(host)) throw new MooncakeError('INVALID_ARGUMENT', 'host memory must be a Buffer, TypedArray or DataView');
    await this.o.native.copyDevice(toDevice, region.at(offset, host.byteLength), host);
  }

  /** The engine closed: every region is released with it. */
  releaseAll(): void {
    for (const r of this.byAddress.values()) r.markReleased();
    this.byAddress.clear();
  }

  private region(address: bigint, length: number, location: string, view?: Buffer, source?: ArrayBuffer | ArrayBufferView): MemoryRegion {
    return new MemoryRegion(this.engine, address, length, location, view, source, this.o.release);
  }

  private async registerOne(memory: MemoryInput, options: RegisterOptions): Promise<MemoryRegion> {
    this.o.assertOpen();
    const reg = checkRegistration(memory, options);
    if ('view' in reg) {
      const v = reg.view;
      const address = await this.o.native.registerBuffer(v, reg.location, reg.remote);
      const buffer = ArrayBuffer.isView(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : Buffer.from(v);
      return this.region(address, buffer.length, reg.location, buffer, v);
    }
    await this.o.native.registerAddress(reg.address, reg.length, reg.location, reg.remote);
    return this.region(reg.address, reg.length, reg.location);
  }

  private async adopt(regions: MemoryRegion[]): Promise<MemoryRegion[]> {
    for (const r of regions) this.byAddress.set(r.address, r);
    try {
      await this.o.publish();
    } catch (err) {
      for (const r of regions) await this.drop(r);
      throw err;
    }
    return regions;
  }

  private async drop(region: MemoryRegion): Promise<void> {
    try {
      await this.o.native.unregister(region.address);
    } catch {
      /* already gone */
    }
    this.byAddress.delete(region.address);
    region.markReleased();
  }
}
