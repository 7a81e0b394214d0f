// backend: 'mooncake' on the npu wheel (TCP, MC_FORCE_TCP=1, empty CANN stand-ins) against a Python
// peer on the non-cuda wheel (`mooncake.engine.TransferEngine`, test/interop/peers/te_peer.py): two
// builds of upstream, one inside mooncake-node, talking over upstream's own TCP transport and an HTTP
// metadata server. Bytes are checked by sha256 on the side that did not move them.
import { createHash, randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine } from '../../lib';
import type { MemoryRegion } from '../../lib/engine/memory';
import type { Segment } from '../../lib/engine/segment';
import { TePeer, stopAllTePeers } from '../interop/peers/te-peer';
import { upstreamNpu, upstreamPeer } from '../helpers/upstream';

const MiB = 1 << 20;
const SIZES = [1, 7, 4096, 65_536 + 3, MiB, 16 * MiB];
const npu = upstreamNpu();
const py = upstreamPeer();
const skipReason = 'skipReason' in npu ? npu.skipReason : 'skipReason' in py ? py.skipReason : undefined;
if (skipReason) console.warn(`\n[upstream backend <-> Python] SKIPPED: ${skipReason}\n`);
else process.env.MC_FORCE_TCP = '1'; // this file runs in its own process (vitest forks)

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(skipReason !== undefined)('npu wheel inside mooncake-node <-> non-cuda wheel in Python, over TCP', () => {
  let meta: MetadataServer;
  let up: TransferEngine;
  let mem: MemoryRegion;
  let peer: TePeer;
  let peerBuf: bigint;
  let seg: Segment;
  const saved = process.env.MC_TCP_BIND_ADDRESS;

  beforeAll(async () => {
    if ('skipReason' in npu) return;
    process.env.MC_TCP_BIND_ADDRESS = '127.0.0.1';
    meta = new MetadataServer({ logger: null });
    const url = (await meta.listen(0, '127.0.0.1')).url;
    peer = await TePeer.create({ metadataUrl: url, name: `py-${process.pid}` });
    peerBuf = await peer.alloc(40 * MiB);
    up = await TransferEngine.create({
      backend: 'mooncake', python: npu.python, ascendRuntimeLibrary: path.join(npu.cannStandin, 'libascendcl.so'),
      protocol: 'tcp', metadataServer: url, localServerName: `node-npu-${process.pid}`,
    });
    mem = await up.registerMemory(Buffer.alloc(40 * MiB));
    seg = await up.openSegment(peer.segment);
  }, 90_000);

  afterAll(async () => {
    await stopAllTePeers();
    await up?.close();
    await meta?.close();
    if (saved === undefined) delete process.env.MC_TCP_BIND_ADDRESS;
    else process.env.MC_TCP_BIND_ADDRESS = saved;
  });

  it('runs the npu wheel (TCP only) and opens the Python segment', () => {
    expect(up.upstream).toMatchObject({ source: 'wheel', wheel: { package: 'mooncake-transfer-engine-npu' }, ascendTransport: 'unusable', forceTcp: true });
    expect(seg.protocol).toBe('tcp');
    expect(seg.buffers.some((b) => b.address <= peerBuf && peerBuf < b.address + BigInt(b.length))).toBe(true);
  });

  it('mooncake-node writes and reads the Python peer, 1 B … 16 MiB (checked in Python)', async () => {
    for (const n of SIZES) {
      const data = randomBytes(n);
      data.copy(mem.buffer!, 5);
      await up.write(seg, [{ local: mem, localOffset: 5, remote: peerBuf + 4099n, length: n }]);
      expect(await peer.sha256(peerBuf + 4099n, n)).toBe(sha(data));
      const theirs = await peer.fill(peerBuf + 20n * BigInt(MiB), n);
      await up.read(seg, [{ local: mem, localOffset: 20 * MiB, remote: peerBuf + 20n * BigInt(MiB), length: n }]);
      expect(sha(mem.buffer!.subarray(20 * MiB, 20 * MiB + n))).toBe(theirs);
    }
  });

  it('the Python peer writes and reads mooncake-node, 1 B … 16 MiB and a 50-request batch', async () => {
    const name = up.localServerName;
    for (const n of SIZES) {
      const theirs = await peer.fill(peerBuf, n);
      expect(await peer.transfer(name, 'write', peerBuf, mem.address + 333n, n)).toBe(0);
      expect(sha(mem.buffer!.subarray(333, 333 + n))).toBe(theirs);
      const ours = randomBytes(n);
      ours.copy(mem.buffer!, 20 * MiB);
      expect(await peer.transfer(name, 'read', peerBuf + 1n, mem.address + BigInt(20 * MiB), n)).toBe(0);
      expect(await peer.sha256(peerBuf + 1n, n)).toBe(sha(ours));
    }
    const reqs = Array.from({ length: 50 }, (_, i) => ({ local: peerBuf + BigInt(i * 70_000), remote: mem.address + BigInt(i * 70_001), length: 1 + ((i * 7919) % 69_000) }));
    const hashes = await peer.fillMany(reqs.map((r) => [r.local, r.length]));
    expect(await peer.batch(name, 'write', reqs)).toBe(0);
    reqs.forEach((r, i) => {
      const off = Number(r.remote - mem.address);
      expect(sha(mem.buffer!.subarray(off, off + r.length))).toBe(hashes[i]);
    });
  });

  it('each side refuses ranges outside what it published, and goes on working', async () => {
    // The npu wheel's TCP target validates the address the Python initiator sends.
    expect(await peer.transfer(up.localServerName, 'read', peerBuf, mem.address + BigInt(39 * MiB), 2 * MiB)).toBe(-1);
    const theirBuf = seg.buffers.find((b) => b.address <= peerBuf && peerBuf < b.address + BigInt(b.length))!;
    const pastTheEnd = theirBuf.address + BigInt(theirBuf.length) - 1024n;
    await expect(up.write(seg, [{ local: mem, remote: pastTheEnd, length: 2 * MiB }])).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    const theirs = await peer.fill(peerBuf, 4096);
    expect(await peer.transfer(up.localServerName, 'write', peerBuf, mem.address, 4096)).toBe(0);
    expect(sha(mem.buffer!.subarray(0, 4096))).toBe(theirs);
  });

  it('notifications both ways', async () => {
    await up.sendNotify(peer.segment, { name: 'to-python', msg: 'hello from the npu wheel' });
    expect(await peer.waitNotifies(1)).toEqual([{ name: 'to-python', msg: 'hello from the npu wheel' }]);
    const it = up.notifies();
    expect(await peer.transfer(up.localServerName, 'write', peerBuf, mem.address, 8, { name: 'to-node', msg: 'written' })).toBe(0);
    expect((await it.next()).value).toEqual({ name: 'to-node', msg: 'written' });
    await it.return?.();
  });
});
