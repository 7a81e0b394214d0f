// Engines end cleanly: killed peers fail pending transfers quickly, worker threads load and unload
// the addon, and processes exit once their engines are closed.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine } from '../../lib';
import { Peer } from '../helpers/peer';

const MiB = 1 << 20;
const fixtures = path.join(__dirname, '../fixtures');

describe('lifecycle', () => {
  let meta: MetadataServer;
  let url: string;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('a peer killed mid-batch makes the pending Promise reject within a bounded time', async () => {
    const peer = await Peer.spawn({ metadataServer: url, memory: 256 * MiB });
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', connectTimeoutMs: 2000 });
    try {
      const region = await engine.allocateManagedBuffer(256 * MiB);
      const seg = await engine.openSegment(peer.info.name);
      const reqs = Array.from({ length: 256 }, (_, i) => ({ local: region, localOffset: i * MiB, remote: seg.address(0, i * MiB, MiB), length: MiB }));
      // Several rounds so the kill lands while bytes are moving.
      const rounds = Array.from({ length: 8 }, () => engine.write(seg, reqs).then(() => 'ok', (e: MooncakeError) => e));
      setTimeout(() => peer.kill(), 30);
      const t0 = Date.now();
      const results = await Promise.all(rounds);
      expect(Date.now() - t0).toBeLessThan(10_000);
      const failures = results.filter((r) => r !== 'ok') as MooncakeError[];
      expect(failures.length).toBeGreaterThan(0);
      for (const f of failures) {
        expect(f).toBeInstanceOf(MooncakeError);
        expect(['CONNECTION_LOST', 'CONNECT_FAILED']).toContain(f.code);
        expect(f.failures).toHaveLength(256);
      }
      // The engine still works with live peers.
      const other = await Peer.spawn({ metadataServer: url, memory: MiB });
      try {
        const s2 = await engine.openSegment(other.info.name);
        await engine.write(s2, [{ local: region, remote: s2.address(0), length: MiB }]);
      } finally {
        await other.close();
      }
    } finally {
      await engine.close();
      peer.kill();
    }
  });

  it('loads, uses and unloads the addon in worker threads', async () => {
    const target = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    const region = await target.registerMemory(Buffer.alloc(1 << 16));
    try {
      const run = (seed: number, leaveOpen = false) => {
        const w = new Worker(path.join(fixtures, 'worker-engine.cjs'), { workerData: { url, peer: target.localServerName, seed, leaveOpen } });
        const message = new Promise<{ ok: boolean; error?: string }>((resolve) => w.once('message', resolve));
        const exit = new Promise<number>((resolve) => w.once('exit', resolve));
        return { w, message, exit };
      };
      const workers = [1, 2, 3, 4].map((s) => run(s));
      for (const { message } of workers) expect(await message).toEqual({ ok: true });
      // Each worker must exit by itself once its engine is closed (env cleanup, no leaked handles).
      const codes = await Promise.race([
        Promise.all(workers.map((x) => x.exit)),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('workers did not exit')), 15_000)),
      ]);
      expect(codes).toEqual([0, 0, 0, 0]);
      for (const s of [1, 2, 3, 4]) expect(region.buffer!.subarray(s * 4096, (s + 1) * 4096).every((b) => b === s)).toBe(true);
      // A worker terminated with its engine open and a transfer in flight: the cleanup hook stops it.
      const open = run(5, true);
      expect(await open.message).toEqual({ ok: true, open: true });
      await open.w.terminate();
      expect(await open.exit).toBe(1);
    } finally {
      await target.close();
    }
  });

  for (const mode of ['close', 'pending', 'unref'] as const) {
    it(`the process exits promptly (${mode})`, () => {
      const t0 = Date.now();
      const r = spawnSync(process.execPath, [path.join(fixtures, 'exit-after-close.cjs'), mode], { timeout: 20_000, encoding: 'utf8' });
      expect(r.error).toBeUndefined();
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toBe(mode === 'pending' ? 'CLOSED\ndone' : mode === 'unref' ? 'unref' : 'done');
      expect(Date.now() - t0).toBeLessThan(15_000);
    });
  }
});
