// The deprecated upstream names on TransferEngine itself delegate to mooncake-node/compat: bytes verified on
// the peer, polled batches findable across calls.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine, type MemoryRegion } from '../../lib';

const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;

describe('deprecated upstream names on TransferEngine', () => {
  let meta: MetadataServer;
  let a: TransferEngine;
  let b: TransferEngine;
  let ra: MemoryRegion;
  let rb: MemoryRegion;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    a = await TransferEngine.create({ metadataServer: url, ...opts });
    b = await TransferEngine.create({ metadataServer: url, ...opts });
    ra = await a.registerMemory(Buffer.alloc(1 << 16));
    rb = await b.registerMemory(Buffer.alloc(1 << 16));
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await meta?.close();
  });

  it('answer as UpstreamCompat does and move the bytes', async () => {
    expect(a.getRpcPort()).toBe(a.rpcPort);
    expect(a.getLocalIpAndPort()).toBe(`127.0.0.1:${a.rpcPort}`);
    expect(await a.getFirstBufferAddress(b.localServerName)).toBe(rb.address);
    const data = randomBytes(4096);
    data.copy(ra.buffer!, 0);
    await a.transferSyncWrite(b.localServerName, ra.address, rb.address, 2048);
    await a.batchTransferSyncWrite(b.localServerName, [ra.at(2048)], [rb.at(2048)], [2048]);
    expect(rb.buffer!.subarray(0, 4096).equals(data)).toBe(true);
    await expect(a.batchTransferSyncRead(b.localServerName, [ra.address], [], [8])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('polled batches allocated through one alias are found by the others', async () => {
    const seg = await a.openSegment(b.localServerName);
    ra.buffer!.fill(0x5a, 0, 1024);
    const batch = a.allocateBatch(2);
    a.submitTransfer(batch, [{ opcode: 'write', segment: seg, local: ra, localOffset: 0, remote: seg.address(0, 8192), length: 1024 }]);
    const until = Date.now() + 10_000;
    while (a.getBatchTransferStatus(batch).status !== 'COMPLETED' && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    expect(a.getBatchTransferStatus(batch)).toEqual({ status: 'COMPLETED', transferredBytes: 1024 });
    expect(a.getTransferStatus(batch, 0)).toMatchObject({ status: 'COMPLETED', transferredBytes: 1024 });
    expect(rb.buffer!.subarray(8192, 9216).every((x) => x === 0x5a)).toBe(true);
    a.freeBatch(batch);
    expect(() => a.getBatchTransferStatus(batch)).toThrow(expect.objectContaining({ code: 'BATCH_NOT_FOUND' }));
    expect(() => b.getTransferStatus(batch, 0)).toThrow(expect.objectContaining({ code: 'BATCH_NOT_FOUND' }));
  });
});
