// backend: 'mooncake' over the library Ascend hosts install: the pinned mooncake-transfer-engine-npu
// wheel (scripts/setup-upstream-npu.sh), found through its venv's Python, on upstream's TCP transport
// (MC_FORCE_TCP=1) with the EMPTY CANN stand-ins, against a built-in engine in the same process.
// MOONCAKE_TE_LIBRARY, when set, points the suite at another upstream build instead.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine } from '../../lib';
import type { MemoryRegion } from '../../lib/engine/memory';
import type { Segment } from '../../lib/engine/segment';
import { upstreamNpu } from '../helpers/upstream';

const MiB = 1 << 20;
const SIZES = [1, 7, 4096, 65_536 + 3, MiB, 16 * MiB];
const envLibrary = process.env.MOONCAKE_TE_LIBRARY;
const npu = upstreamNpu();
const skipReason = envLibrary ? (fs.existsSync(envLibrary) ? undefined : `MOONCAKE_TE_LIBRARY=${envLibrary} does not exist`) : 'skipReason' in npu ? npu.skipReason : undefined;
if (skipReason) console.warn(`\n[upstream backend] SKIPPED the real-library suite: ${skipReason}\n`);
const wheel = !envLibrary && !('skipReason' in npu) ? npu : undefined;
// Where the suite's library comes from: the npu wheel through its Python (with the empty CANN
// stand-ins, TCP only), or the given library.
const source = wheel ? { python: wheel.python, ascendRuntimeLibrary: path.join(wheel.cannStandin, 'libascendcl.so') } : { library: envLibrary };
if (wheel) process.env.MC_FORCE_TCP = '1'; // this file runs in its own process (vitest forks)

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('backend mooncake: errors without a library', () => {
  it('names the library and the variable', async () => {
    const err = await TransferEngine.create({ backend: 'mooncake', library: '/nonexistent/libtransfer_engine.so', metadataServer: 'P2PHANDSHAKE' }).catch((e: MooncakeError) => e);
    expect(err).toBeInstanceOf(MooncakeError);
    expect((err as MooncakeError).code).toBe('LIBRARY_NOT_FOUND');
    expect((err as MooncakeError).message).toMatch(/libtransfer_engine\.so/);
    expect((err as MooncakeError).message).toMatch(/MOONCAKE_TE_LIBRARY/);
  });

  it('says why no installed wheel was found', async () => {
    const err = await TransferEngine.create({ backend: 'mooncake', python: '/nonexistent/python3', metadataServer: 'P2PHANDSHAKE' }).catch((e: MooncakeError) => e);
    expect((err as MooncakeError).code).toBe('LIBRARY_NOT_FOUND');
    expect((err as MooncakeError).message).toMatch(/Python interpreter '\/nonexistent\/python3' not found/);
  });
});

describe.skipIf(skipReason !== undefined)('backend mooncake against a real upstream build', () => {
  let meta: MetadataServer;
  let url: string;
  let up: TransferEngine;
  let node: TransferEngine;
  let upMem: MemoryRegion;
  let nodeMem: MemoryRegion;
  let segB: Segment; // the built-in engine, as the upstream backend sees it
  let segA: Segment; // the upstream backend, as the built-in engine sees it
  const saved = process.env.MC_TCP_BIND_ADDRESS;

  beforeAll(async () => {
    process.env.MC_TCP_BIND_ADDRESS = '127.0.0.1'; // upstream advertises loopback
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
    up = await TransferEngine.create({ backend: 'mooncake', ...source, protocol: 'tcp', metadataServer: url, localServerName: 'upstream-backend' });
    node = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', localServerName: 'builtin-peer' });
    upMem = await up.registerMemory(Buffer.alloc(40 * MiB));
    nodeMem = await node.registerMemory(Buffer.alloc(40 * MiB));
    segB = await up.openSegment('builtin-peer');
    segA = await node.openSegment('upstream-backend');
  });
  afterAll(async () => {
    await up?.close();
    await node?.close();
    await meta?.close();
    if (saved === undefined) delete process.env.MC_TCP_BIND_ADDRESS;
    else process.env.MC_TCP_BIND_ADDRESS = saved;
  });

  it.skipIf(!wheel)('found the npu wheel through its Python and bound it lazily for TCP (the CANN libraries are empty stand-ins)', () => {
    const info = up.upstream!;
    expect(up.backend).toBe('mooncake');
    expect(info).toMatchObject({ source: 'wheel', library: wheel!.library, lazyBinding: true, forceTcp: true, ascendTransport: 'unusable' });
    expect(info.wheel).toEqual({ package: 'mooncake-transfer-engine-npu', version: wheel!.version, tested: true });
    expect(info.ascendProblem).toMatch(/undefined symbol: aclrt/);
    expect(info.cann.map((c) => [c.name, c.standin])).toEqual([['libascendcl.so', 'empty'], ['libllm_datadist.so', 'empty'], ['libmetadef.so', 'empty']]);
  });

  it('refuses a protocol the build lacks', async () => {
    await expect(TransferEngine.create({ backend: 'mooncake', ...source, protocol: 'no-such-transport', metadataServer: url, localServerName: 'x-proto' }))
      .rejects.toMatchObject({ code: 'NOT_SUPPORTED_TRANSPORT' });
  });

  it('each side sees the other\'s buffers', () => {
    expect(segB.buffers.some((b) => b.address === nodeMem.address)).toBe(true);
    expect(segA.buffers.some((b) => b.address === upMem.address)).toBe(true);
  });

  // `from` writes `remoteMem` through `seg` (checked there), then reads it back (checked locally).
  async function roundTrips(from: TransferEngine, seg: Segment, local: MemoryRegion, remoteMem: MemoryRegion, lOff: number, rOff: number): Promise<void> {
    for (const n of SIZES) {
      const data = randomBytes(n);
      data.copy(local.buffer!, lOff);
      await from.write(seg, [{ local, localOffset: lOff, remote: seg.address(0, rOff, n), length: n }]);
      expect(sha(remoteMem.buffer!.subarray(rOff, rOff + n))).toBe(sha(data));
      local.buffer!.fill(0, 20 * MiB, 20 * MiB + n);
      await from.read(seg, [{ local, localOffset: 20 * MiB, remote: seg.address(0, rOff, n), length: n }]);
      expect(sha(local.buffer!.subarray(20 * MiB, 20 * MiB + n))).toBe(sha(data));
    }
  }

  it('upstream backend -> built-in: write then read back, 1 B … 16 MiB', () => roundTrips(up, segB, upMem, nodeMem, 3, 4099));

  it('built-in -> upstream backend: write then read back, 1 B … 16 MiB', () => roundTrips(node, segA, nodeMem, upMem, 11, 77));

  it('batches of 100 scattered requests both ways', async () => {
    const lens = Array.from({ length: 100 }, (_, i) => 1 + ((i * 2654435761) % 70_000));
    const offs: number[] = [];
    lens.reduce((at, n) => (offs.push(at), at + n + 5), 1);
    const total = offs[99]! + lens[99]!;
    const data = randomBytes(total);
    data.copy(upMem.buffer!, 0);
    await up.write(segB, lens.map((n, i) => ({ local: upMem, localOffset: offs[i]!, remote: segB.address(0, offs[i]! + MiB, n), length: n })));
    for (let i = 0; i < 100; i++) expect(nodeMem.buffer!.subarray(MiB + offs[i]!, MiB + offs[i]! + lens[i]!).equals(data.subarray(offs[i]!, offs[i]! + lens[i]!))).toBe(true);
    upMem.buffer!.fill(0, 0, total);
    const r = await up.read(segB, lens.map((n, i) => ({ local: upMem, localOffset: offs[i]!, remote: segB.address(0, offs[i]! + MiB, n), length: n })));
    expect(r.bytes).toBe(lens.reduce((a, b) => a + b, 0));
    for (let i = 0; i < 100; i++) expect(upMem.buffer!.subarray(offs[i]!, offs[i]! + lens[i]!).equals(data.subarray(offs[i]!, offs[i]! + lens[i]!))).toBe(true);
  });

  it('its metrics count upstream\'s tasks per peer segment, and the built-in target counts what it served', async () => {
    const sample = (e: TransferEngine, name: string, labels: Record<string, string>): number => {
      const f = e.collectMetrics().find((x) => x.name === name)!;
      let n = 0;
      for (const s of f.samples) if ('value' in s && Object.entries(labels).every(([k, v]) => s.labels?.[k] === v)) n += s.value;
      return n;
    };
    const before = {
      up: sample(up, 'mooncake_engine_bytes_total', { peer: 'builtin-peer', role: 'initiator', op: 'write' }),
      ok: sample(up, 'mooncake_engine_transfers_total', { result: 'ok' }),
      served: sample(node, 'mooncake_engine_bytes_total', { role: 'target', op: 'write' }),
    };
    const n = 3 * 4096 + 5;
    await up.write(segB, [{ local: upMem, remote: segB.address(0, 2 * MiB, n), length: n }]);
    expect(sample(up, 'mooncake_engine_bytes_total', { peer: 'builtin-peer', role: 'initiator', op: 'write' }) - before.up).toBe(n);
    expect(sample(up, 'mooncake_engine_transfers_total', { result: 'ok' }) - before.ok).toBe(1);
    expect(sample(node, 'mooncake_engine_bytes_total', { role: 'target', op: 'write' }) - before.served).toBe(n);
    const hist = up.collectMetrics().find((x) => x.name === 'mooncake_engine_transfer_duration_seconds')!;
    expect(hist.samples).toHaveLength(1);
  });

  it('reports failures by code, and keeps working after them', async () => {
    await expect(up.openSegment('no-such-segment')).rejects.toMatchObject({ code: 'SEGMENT_NOT_FOUND' });
    await expect(up.write(segB, [{ local: 123n, remote: segB.address(0), length: 16 }])).rejects.toMatchObject({ code: 'ADDRESS_NOT_REGISTERED' });
    await expect(up.write(segB, [{ local: upMem, remote: segB.address(0), length: 0 }])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    // An address the peer never published: the built-in target refuses it, upstream marks the task failed.
    const refused = await up.write(segB, [{ local: upMem, remote: 4096n, length: 16 }]).catch((e: MooncakeError) => e);
    expect(refused).toBeInstanceOf(MooncakeError);
    expect((refused as MooncakeError).code).toBe('CONNECTION_LOST');
    const again = randomBytes(1000);
    again.copy(upMem.buffer!);
    await up.write(segB, [{ local: upMem, remote: segB.address(0, 0, 1000), length: 1000 }]);
    expect(nodeMem.buffer!.subarray(0, 1000).equals(again)).toBe(true);
  });

  it('settles aborted batches: before submission at once, after it once upstream is done', async () => {
    const pre = new AbortController();
    pre.abort();
    await expect(up.write(segB, [{ local: upMem, remote: segB.address(0), length: MiB }], { signal: pre.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    const ac = new AbortController();
    const p = up.write(segB, [{ local: upMem, remote: segB.address(0), length: 16 * MiB }], { signal: ac.signal });
    ac.abort();
    // Upstream cannot recall a posted transfer: the Promise settles once it is terminal, either way.
    const outcome = await p.then(() => 'done', (e: MooncakeError) => e.code);
    expect(['done', 'ABORT_ERR']).toContain(outcome);
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

  it('reports its throughput against built-in -> built-in in the same run (informational)', async () => {
    const other = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', localServerName: 'builtin-2' });
    try {
      const rate = async (from: TransferEngine, to: string): Promise<number> => {
        const a = await from.allocateManagedBuffer(16 * MiB);
        const seg = await from.openSegment(to, { refresh: true });
        const batch = from.prepareBatch(seg, 'write', Array.from({ length: 16 }, (_, i) => ({ local: a, localOffset: i * MiB, remote: seg.address(0, i * MiB, MiB), length: MiB })));
        const t0 = performance.now();
        let bytes = 0;
        while (performance.now() - t0 < 1500) bytes += (await from.submitPrepared(batch)).bytes;
        return bytes / ((performance.now() - t0) / 1000) / 1e9;
      };
      const runs = { up: [] as number[], builtin: [] as number[] };
      for (let i = 0; i < 3; i++) {
        runs.up.push(await rate(up, 'builtin-peer'));
        runs.builtin.push(await rate(other, 'builtin-peer'));
      }
      const median = (v: number[]) => [...v].sort((x, y) => x - y)[1]!;
      console.log(`[upstream backend] tcp write, 1 MiB x 16 per batch, median of 3 x 1.5 s: upstream backend -> built-in ${median(runs.up).toFixed(2)} GB/s, built-in -> built-in ${median(runs.builtin).toFixed(2)} GB/s (ratio ${(median(runs.up) / median(runs.builtin)).toFixed(2)})`);
      expect(median(runs.up)).toBeGreaterThan(0);
    } finally {
      await other.close();
    }
  });
});
