// The same-host fast path between processes: engine-allocated (shareable) memory is mapped by a peer
// on the same kernel and copied with memcpy; TCP is not used, and a dead peer is noticed.
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine } from '../../lib';
import { Peer } from '../helpers/peer';

const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('same-host fast path', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('copies to and from a peer process through shared memory, bytes verified, no TCP', async () => {
    const peer = await Peer.spawn({ metadataServer: url, memory: 16 * MiB, managed: true });
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const region = await engine.allocateManagedBuffer(16 * MiB);
      const seg = await engine.openSegment(peer.info.name);
      const data = randomBytes(10 * MiB + 3);
      data.copy(region.buffer!);
      await engine.write(seg, [{ local: region, remote: seg.address(0, 4096, data.length), length: data.length }]);
      expect(await peer.call('sha256', { offset: 4096, length: data.length })).toBe(sha(data));
      region.buffer!.fill(0);
      await engine.read(seg, Array.from({ length: 10 }, (_, i) => ({ local: region, localOffset: i * MiB, remote: seg.address(0, 4096 + i * MiB, MiB), length: MiB })));
      expect(region.buffer!.subarray(0, 10 * MiB).equals(data.subarray(0, 10 * MiB))).toBe(true);
      const stats = engine.stats();
      expect(stats.sameHostCopies).toBe(11);
      expect(stats.sameHostBytes).toBe(data.length + 10 * MiB);
      const peerStats = await peer.call<Record<string, number>>('stats');
      expect(peerStats.requestsServed).toBe(0); // nothing came over its data port
      // The peer dies: the next transfer fails instead of writing into orphaned memory.
      peer.kill();
      await peer.exited;
      await expect(engine.write(seg, [{ local: region, remote: seg.address(0), length: 4096 }])).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    } finally {
      await engine.close();
      peer.kill();
    }
  });

  it('can be turned off, and never applies to memory that is not shareable', async () => {
    const peer = await Peer.spawn({ metadataServer: url, memory: 4 * MiB, managed: true });
    const off = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', sameHostFastPath: false });
    const on = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const r1 = await off.allocateManagedBuffer(MiB);
      const s1 = await off.openSegment(peer.info.name);
      await off.write(s1, [{ local: r1, remote: s1.address(0), length: MiB }]);
      expect(off.stats().sameHostCopies).toBe(0);
      // A host Buffer registered by `on` is not shareable: peers writing to it use TCP.
      await on.registerMemory(Buffer.alloc(MiB));
      expect(on.describe()).not.toContain('mcnode_shm');
      const r2 = await on.allocateManagedBuffer(MiB);
      expect(on.describe()).toContain('mcnode_shm_path');
      void r2;
    } finally {
      await off.close();
      await on.close();
      await peer.close();
    }
  });
});
