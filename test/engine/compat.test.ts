// mooncake-node/compat: upstream's Python names and its polled batch API over a TransferEngine, bytes
// verified on the peer.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine, type MemoryRegion } from '../../lib';
import { UpstreamCompat } from '../../lib/compat';

const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;

describe('UpstreamCompat', () => {
  let meta: MetadataServer;
  let a: TransferEngine;
  let b: TransferEngine;
  let ra: MemoryRegion;
  let rb: MemoryRegion;
  let te: UpstreamCompat;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    a = await TransferEngine.create({ metadataServer: url, ...opts });
    b = await TransferEngine.create({ metadataServer: url, ...opts });
    ra = await a.registerMemory(Buffer.alloc(1 << 20));
    rb = await b.registerMemory(Buffer.alloc(1 << 20));
    te = new UpstreamCompat(a);
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await meta?.close();
  });

  it('answers with the engine’s endpoint and the peer’s first buffer', async () => {
    expect(te.getRpcPort()).toBe(a.rpcPort);
    expect(te.getLocalIpAndPort()).toBe(`127.0.0.1:${a.rpcPort}`);
    expect(await te.getFirstBufferAddress(b.localServerName)).toBe(rb.address);
  });

  it('transfer_sync_* and batch_transfer_sync_* move the bytes', async () => {
    const data = randomBytes(8192);
    data.copy(ra.buffer!, 0);
    await te.transferSyncWrite(b.localServerName, ra.address, rb.address, 4096);
    expect(rb.buffer!.subarray(0, 4096).equals(data.subarray(0, 4096))).toBe(true);
    await te.batchTransferSyncWrite(b.localServerName, [ra.at(4096), ra.at(6144)], [rb.at(4096), rb.at(6144)], [2048, 2048]);
    expect(rb.buffer!.subarray(0, 8192).equals(data)).toBe(true);
    ra.buffer!.fill(0, 0, 8192);
    await te.transferSyncRead(b.localServerName, ra.address, rb.address, 4096);
    await te.batchTransferSyncRead(b.localServerName, [ra.at(4096)], [rb.at(4096)], [4096]);
    expect(ra.buffer!.subarray(0, 8192).equals(data)).toBe(true);
    await expect(te.batchTransferSyncRead(b.localServerName, [ra.address], [], [8])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('polled batches: per-task state and bytes, the batch total, capacity, busy and unknown batches', async () => {
    const seg = await a.openSegment(b.localServerName);
    ra.buffer!.fill(0x42, 0, 1024);
    expect(() => te.allocateBatch(0)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const batch = te.allocateBatch(4);
    const write = (off: number) => ({ opcode: 'write' as const, segment: seg, local: ra, localOffset: off, remote: seg.address(0, 100_000 + off), length: 512 });
    te.submitTransfer(batch, [write(0), write(512)]);
    expect(() => te.freeBatch(batch)).toThrow(expect.objectContaining({ code: 'BATCH_BUSY' }));
    expect(() => te.submitTransfer(batch, [write(0), write(0), write(0)])).toThrow(expect.objectContaining({ code: 'TOO_MANY_REQUESTS' }));
    for (let task = 0; task < 2; task++) {
      let s = te.getTransferStatus(batch, task);
      for (let i = 0; i < 500 && s.status === 'WAITING'; i++) {
        await new Promise((r) => setTimeout(r, 2));
        s = te.getTransferStatus(batch, task);
      }
      expect(s).toEqual({ status: 'COMPLETED', transferredBytes: 512 });
    }
    expect(te.getBatchTransferStatus(batch)).toEqual({ status: 'COMPLETED', transferredBytes: 1024 });
    expect(rb.buffer![100_000 + 1000]).toBe(0x42);
    // A request the engine refuses throws (naming it) and adds no task.
    expect(() => te.submitTransfer(batch, [{ ...write(0), remote: seg.address(0, (1 << 20) - 256) }])).toThrow(expect.objectContaining({ code: 'INVALID_REMOTE_ADDRESS', index: 0 }));
    expect(() => te.getTransferStatus(batch, 2)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    te.freeBatch(batch);
    expect(() => te.freeBatch(batch)).toThrow(expect.objectContaining({ code: 'BATCH_NOT_FOUND' }));
    expect(() => te.getBatchTransferStatus(batch)).toThrow(expect.objectContaining({ code: 'BATCH_NOT_FOUND' }));
  });
});
