// Two engines in separate processes (plus the test process) moving bytes over 127.0.0.1 through an
// embedded HTTP metadata server; bytes verified on both sides.
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine, type MemoryRegion, type Segment } from '../../lib';
import { Peer, pattern } from '../helpers/peer';
import { startPeerPair, type PeerPair } from '../helpers/peer-pair';

const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('transfers between processes', () => {
  let peer: Peer;
  let engine: TransferEngine;
  let region: MemoryRegion;
  let seg: Segment;

  let pair: PeerPair | undefined;

  beforeAll(async () => {
    pair = await startPeerPair({ memory: 80 * MiB, pattern: 7 });
    ({ peer, engine, region, seg } = pair);
  });

  afterAll(() => pair?.close());

  it('opens the peer segment from the metadata it published', () => {
    expect(seg.buffers).toHaveLength(1);
    expect(seg.buffers[0].address).toBe(peer.info.address);
    expect(seg.buffers[0].length).toBe(80 * MiB);
    expect(seg.protoVersion).toBe(2);
    expect(seg.ip).toBe('127.0.0.1');
  });

  for (const size of [1, 3, 4096, 65_536 + 17, MiB, 5 * MiB + 3, 64 * MiB]) {
    it(`writes then reads back ${size} random bytes`, async () => {
      const data = randomBytes(size);
      data.copy(region.buffer!, 0);
      const remoteOffset = 4096 + (size % 1000);
      const w = await engine.write(seg, [{ local: region, remote: seg.address(0, remoteOffset, size), length: size }]);
      expect(w.bytes).toBe(size);
      expect(await peer.call('sha256', { offset: remoteOffset, length: size })).toBe(sha(data));
      region.buffer!.fill(0, 0, size);
      await engine.read(seg, [{ local: region, localOffset: 0, remote: seg.address(0, remoteOffset, size), length: size }]);
      expect(sha(region.buffer!.subarray(0, size))).toBe(sha(data));
    });
  }

  it('reads the pattern the peer wrote itself', async () => {
    // The last 4 MiB of the peer's buffer are never written by these tests.
    const off = 76 * MiB;
    await engine.read(seg, [{ local: region, remote: seg.address(0, off, 4 * MiB), length: 4 * MiB }]);
    expect(region.buffer!.subarray(0, 4 * MiB).equals(pattern(7, 80 * MiB).subarray(off))).toBe(true);
  });

  it('moves a 1000-request scatter batch both ways', async () => {
    const n = 1000;
    const block = 4096;
    const data = randomBytes(n * block);
    data.copy(region.buffer!, 0);
    const slot = (i: number) => ((i * 7919) % n) * block + 8 * MiB;
    const reqs = Array.from({ length: n }, (_, i) => ({ local: region, localOffset: i * block, remote: seg.address(0, slot(i), block), length: block }));
    const w = await engine.write(seg, reqs);
    expect(w).toEqual({ bytes: n * block, requests: n });
    for (const i of [0, 1, 499, 998, 999]) {
      expect(await peer.call('bytes', { offset: slot(i), length: block })).toBe(data.subarray(i * block, (i + 1) * block).toString('hex'));
    }
    region.buffer!.fill(0, 0, n * block);
    await engine.read(seg, reqs);
    expect(region.buffer!.subarray(0, n * block).equals(data)).toBe(true);
  });

  it('serves the peer: the peer writes into and reads from this process', async () => {
    const data = randomBytes(3 * MiB);
    data.copy(region.buffer!, 32 * MiB);
    await peer.call('fill', { offset: 0, length: 3 * MiB, seed: 99 });
    await peer.call('write', { target: engine.localServerName, requests: [{ localOffset: 0, remoteOffset: 16 * MiB, length: 3 * MiB }] });
    expect(region.buffer!.subarray(16 * MiB, 19 * MiB).equals(pattern(99, 3 * MiB))).toBe(true);
    await peer.call('read', { target: engine.localServerName, requests: [{ localOffset: 40 * MiB, remoteOffset: 32 * MiB, length: 3 * MiB }] });
    expect(await peer.call('sha256', { offset: 40 * MiB, length: 3 * MiB })).toBe(sha(data));
  });

  it('runs concurrent batches', async () => {
    const jobs = Array.from({ length: 16 }, async (_, j) => {
      const off = j * MiB;
      const data = randomBytes(MiB);
      data.copy(region.buffer!, 48 * MiB + off);
      await engine.write(seg, [{ local: region, localOffset: 48 * MiB + off, remote: seg.address(0, 48 * MiB + off, MiB), length: MiB }]);
      return sha(data);
    });
    const hashes = await Promise.all(jobs);
    for (let j = 0; j < 16; j++) expect(await peer.call('sha256', { offset: 48 * MiB + j * MiB, length: MiB })).toBe(hashes[j]);
  });
});

describe('several peers at once', () => {
  it('writes distinct data to three peers concurrently and reads it back', async () => {
    const meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    const peers = await Promise.all([1, 2, 3].map((i) => Peer.spawn({ metadataServer: url, memory: 8 * MiB, pattern: i })));
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const region = await engine.registerMemory(Buffer.alloc(24 * MiB));
      const segs = await Promise.all(peers.map((p) => engine.openSegment(p.info.name)));
      const datas = peers.map(() => randomBytes(8 * MiB));
      datas.forEach((d, i) => d.copy(region.buffer!, i * 8 * MiB));
      await Promise.all(segs.map((s, i) => engine.write(s, Array.from({ length: 8 }, (_, k) => ({
        local: region, localOffset: i * 8 * MiB + k * MiB, remote: s.address(0, k * MiB, MiB), length: MiB,
      })))));
      for (let i = 0; i < 3; i++) expect(await peers[i].call('sha256', {})).toBe(sha(datas[i]));
      region.buffer!.fill(0);
      await Promise.all(segs.map((s, i) => engine.read(s, [{ local: region, localOffset: i * 8 * MiB, remote: s.address(0), length: 8 * MiB }])));
      for (let i = 0; i < 3; i++) expect(region.buffer!.subarray(i * 8 * MiB, (i + 1) * 8 * MiB).equals(datas[i])).toBe(true);
    } finally {
      await engine.close();
      await Promise.all(peers.map((p) => p.close()));
      await meta.close();
    }
  });
});
