// NPU memory through the Ascend runtime, exercised with the STAND-IN libascendcl
// (test/native/standin): its device memory is not addressable from the host, so a transfer that
// touched it directly would crash instead of passing.
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine } from '../../lib';
import { ascendStandin } from '../helpers/ascend-standin';
import { Peer } from '../helpers/peer';

const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('NPU memory (stand-in Ascend runtime)', () => {
  let lib: string;
  let meta: MetadataServer;
  let url: string;
  let engine: TransferEngine;

  beforeAll(async () => {
    lib = ascendStandin();
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', ascendRuntimeLibrary: lib });
  });
  afterAll(async () => {
    await engine?.close();
    await meta?.close();
  });

  it('allocates 2 MiB-aligned device memory and copies to and from it', async () => {
    const dev = await engine.allocateDeviceMemory('npu:0', 3 * MiB + 5);
    expect(dev.address % BigInt(2 * MiB)).toBe(0n);
    expect(dev.device).toBe(0);
    expect(dev.buffer).toBeUndefined();
    const data = randomBytes(3 * MiB + 5);
    await engine.copyToDevice(dev, 0, data);
    const back = Buffer.alloc(data.length);
    await engine.copyFromDevice(dev, 0, back);
    expect(back.equals(data)).toBe(true);
    const part = Buffer.alloc(100);
    await engine.copyFromDevice(dev, 1000, part);
    expect(part.equals(data.subarray(1000, 1100))).toBe(true);
    await expect(engine.copyFromDevice(dev, 3 * MiB, Buffer.alloc(10))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await engine.freeDeviceMemory(dev);
    await expect(engine.copyToDevice(dev, 0, data)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('gives clear errors for bad devices, locations and a missing runtime', async () => {
    await expect(engine.allocateDeviceMemory('npu:9', MiB)).rejects.toMatchObject({ code: 'DEVICE_NOT_FOUND' });
    await expect(engine.allocateDeviceMemory('gpu:0', MiB)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(engine.registerMemory(Buffer.alloc(16), { location: 'npu:0' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(engine.registerMemory({ address: 3n * 1024n * 1024n, length: 4096 }, { location: 'npu:0' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(engine.registerMemory({ address: 1n << 40n, length: 4096 }, { location: 'npu:5' })).rejects.toMatchObject({ code: 'DEVICE_NOT_FOUND' });
    const other = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', ascendRuntimeLibrary: '/nonexistent/libascendcl.so' });
    try {
      const err = await other.allocateDeviceMemory('npu:0', MiB).catch((e: MooncakeError) => e);
      expect(err).toBeInstanceOf(MooncakeError);
      expect((err as MooncakeError).code).toBe('LIBRARY_NOT_FOUND');
      expect((err as MooncakeError).message).toMatch(/libascendcl\.so/);
      expect((err as MooncakeError).message).toMatch(/MOONCAKE_ASCENDCL_LIBRARY/);
    } finally {
      await other.close();
    }
  });

  it('moves bytes between host memory here and npu:1 memory in another process, both ways', async () => {
    const peer = await Peer.spawn({ metadataServer: url, memory: 8 * MiB, device: 'npu:1', options: { ascendRuntimeLibrary: lib } });
    try {
      const host = await engine.registerMemory(Buffer.alloc(8 * MiB));
      const devHere = await engine.allocateDeviceMemory('npu:0', 8 * MiB);
      const seg = await engine.openSegment(peer.info.name);
      expect(seg.buffers[0].address % BigInt(2 * MiB)).toBe(0n);
      const data = randomBytes(5 * MiB + 123);
      data.copy(host.buffer!);
      await engine.write(seg, [{ local: host, remote: seg.address(0, 4096, data.length), length: data.length }]);
      expect(await peer.call('sha256', { offset: 4096, length: data.length })).toBe(sha(data));
      // Device here <- device there, then device here -> device there at another offset.
      await engine.read(seg, [{ local: devHere, remote: seg.address(0, 4096, data.length), length: data.length }]);
      const check = Buffer.alloc(data.length);
      await engine.copyFromDevice(devHere, 0, check);
      expect(check.equals(data)).toBe(true);
      await engine.write(seg, Array.from({ length: 4 }, (_, i) => ({ local: devHere, localOffset: i * 65536, remote: seg.address(0, 6 * MiB + i * 65536, 65536), length: 65536 })));
      expect(await peer.call('sha256', { offset: 6 * MiB, length: 4 * 65536 })).toBe(sha(data.subarray(0, 4 * 65536)));
    } finally {
      await peer.close();
    }
  });
});
