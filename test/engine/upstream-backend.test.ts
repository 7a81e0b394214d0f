// backend: 'mooncake' — the same TransferEngine API over a real upstream libtransfer_engine.so, loaded
// at run time. Runs when MOONCAKE_TE_LIBRARY points at an upstream build (see docs/ascend.md for what
// such a build needs); the missing-library path always runs.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine } from '../../lib';

const MiB = 1 << 20;
const library = process.env.MOONCAKE_TE_LIBRARY;
const haveLibrary = !!library && fs.existsSync(library);
if (!haveLibrary) {
  console.warn(`[upstream backend] SKIPPED the real-library suite: set MOONCAKE_TE_LIBRARY to an upstream Mooncake build's libtransfer_engine.so (now ${library ? `'${library}', which does not exist` : 'unset'}).`);
}

describe('backend mooncake: errors without a library', () => {
  it('names the library and the variable', async () => {
    const err = await TransferEngine.create({ backend: 'mooncake', library: '/nonexistent/libtransfer_engine.so', metadataServer: 'P2PHANDSHAKE' }).catch((e: MooncakeError) => e);
    expect(err).toBeInstanceOf(MooncakeError);
    expect((err as MooncakeError).code).toBe('LIBRARY_NOT_FOUND');
    expect((err as MooncakeError).message).toMatch(/libtransfer_engine\.so/);
    expect((err as MooncakeError).message).toMatch(/MOONCAKE_TE_LIBRARY/);
  });
});

describe.skipIf(!haveLibrary)('backend mooncake against a real upstream build', () => {
  let meta: MetadataServer;
  let url: string;
  let up: TransferEngine;
  let node: TransferEngine;
  const saved = process.env.MC_TCP_BIND_ADDRESS;

  beforeAll(async () => {
    process.env.MC_TCP_BIND_ADDRESS = '127.0.0.1'; // upstream advertises loopback
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    up = await TransferEngine.create({ backend: 'mooncake', library, protocol: 'tcp', metadataServer: url, localServerName: 'upstream-backend' });
    node = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', localServerName: 'builtin-peer' });
  });
  afterAll(async () => {
    await up?.close();
    await node?.close();
    await meta?.close();
    if (saved === undefined) delete process.env.MC_TCP_BIND_ADDRESS;
    else process.env.MC_TCP_BIND_ADDRESS = saved;
  });

  it('refuses a protocol the build lacks', async () => {
    await expect(TransferEngine.create({ backend: 'mooncake', library, protocol: 'no-such-transport', metadataServer: url, localServerName: 'x-proto' }))
      .rejects.toMatchObject({ code: 'NOT_SUPPORTED_TRANSPORT' });
  });

  it('moves bytes both ways between the upstream backend and a built-in engine, verified', async () => {
    const a = await up.registerMemory(Buffer.alloc(16 * MiB));
    const b = await node.registerMemory(Buffer.alloc(16 * MiB));
    expect(up.backend).toBe('mooncake');
    const segB = await up.openSegment('builtin-peer');
    expect(segB.buffers[0].address).toBe(b.address);
    const data = randomBytes(9 * MiB + 7);
    data.copy(a.buffer!);
    await up.write(segB, [{ local: a, remote: segB.address(0, 4096, data.length), length: data.length }]);
    expect(b.buffer!.subarray(4096, 4096 + data.length).equals(data)).toBe(true);
    a.buffer!.fill(0);
    await up.read(segB, Array.from({ length: 9 }, (_, i) => ({ local: a, localOffset: i * MiB, remote: segB.address(0, 4096 + i * MiB, MiB), length: MiB })));
    expect(a.buffer!.subarray(0, 9 * MiB).equals(data.subarray(0, 9 * MiB))).toBe(true);
    // The other way: the built-in engine opens the segment upstream published.
    const segA = await node.openSegment('upstream-backend');
    const more = randomBytes(3 * MiB);
    more.copy(b.buffer!, 0);
    await node.write(segA, [{ local: b, remote: segA.address(0, MiB, more.length), length: more.length }]);
    expect(createHash('sha256').update(a.buffer!.subarray(MiB, MiB + more.length)).digest('hex')).toBe(createHash('sha256').update(more).digest('hex'));
  });

  it('reports failures by code and settles aborted batches', async () => {
    const a = await up.registerMemory(Buffer.alloc(MiB));
    const segB = await up.openSegment('builtin-peer');
    await expect(up.write(segB, [{ local: a, remote: 4096n, length: 16 }])).rejects.toBeInstanceOf(MooncakeError);
    await expect(up.write(segB, [{ local: 123n, remote: segB.address(0), length: 16 }])).rejects.toMatchObject({ code: 'ADDRESS_NOT_REGISTERED' });
    const ac = new AbortController();
    const p = up.write(segB, [{ local: a, remote: segB.address(0), length: MiB }], { signal: ac.signal });
    ac.abort();
    // Upstream cannot recall a posted transfer: the Promise settles once it is terminal, either way.
    await p.catch((e: MooncakeError) => expect(e.code).toBe('ABORT_ERR'));
  });

  it('carries notifications both ways', async () => {
    const got = new Promise((resolve) => node.once('notify', resolve));
    await up.sendNotify('builtin-peer', { name: 'req-1', msg: 'from upstream backend' });
    expect(await got).toEqual({ name: 'req-1', msg: 'from upstream backend' });
    const back = up.notifies();
    await node.sendNotify('upstream-backend', { name: 'req-2', msg: 'from built-in' });
    expect((await back.next()).value).toEqual({ name: 'req-2', msg: 'from built-in' });
    await back.return?.();
  });

  it('reports its throughput (informational)', async () => {
    const a = await up.allocateManagedBuffer(64 * MiB);
    const b = await node.allocateManagedBuffer(64 * MiB);
    const segB = await up.openSegment('builtin-peer', { refresh: true });
    const batch = up.prepareBatch(segB, 'write', Array.from({ length: 16 }, (_, i) => ({ local: a, localOffset: i * MiB, remote: b.address + BigInt(i * MiB), length: MiB })));
    const t0 = performance.now();
    let bytes = 0;
    while (performance.now() - t0 < 2000) bytes += (await up.submitPrepared(batch)).bytes;
    const gbps = bytes / ((performance.now() - t0) / 1000) / 1e9;
    console.log(`[upstream backend] tcp write, 1 MiB x 16 per batch, upstream backend -> built-in engine: ${gbps.toFixed(2)} GB/s`);
    expect(bytes).toBeGreaterThan(0);
  });
});
