// Engine-allocated memory larger than the biggest Buffer Node 20 makes (4 GiB). The raw binding used
// to abort the process ("double free") while wrapping such memory in an ArrayBuffer; now the region
// is registered without a JS view and moves bytes at offsets past 4 GiB like any other.
import { spawnSync } from 'node:child_process';
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine } from '../../lib';

const GiB = 2 ** 30;
const SIZE = 5 * GiB;

/** MemAvailable from /proc/meminfo, in bytes (what `free` shows as available). */
function availableBytes(): number {
  const m = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : os.freemem();
}

// The test touches a few pages only, but a 5 GiB region must fit in the machine for the engine to take it.
const enough = availableBytes() >= SIZE + GiB;
if (!enough) {
  console.warn(`SKIPPED large managed buffers: ${(availableBytes() / GiB).toFixed(1)} GiB available, the test needs ${(SIZE + GiB) / GiB} GiB`);
}

describe.skipIf(!enough)('managed buffers above 4 GiB', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('the raw binding registers 5 GiB without aborting (in a child process, so an abort is a failure here)', () => {
    const script = `
      const { loadNative } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/engine/native.js'))});
      const b = loadNative();
      const e = new b.Engine({ localServerName: '127.0.0.1:1' }, () => {});
      (async () => {
        await e.start();
        const m = await e.allocateManaged(${SIZE}, true, 'cpu:0');
        const out = { hasBuffer: m.buffer !== undefined, byteLength: m.buffer ? m.buffer.byteLength : 0, regions: e.stats().registeredRegions, address: typeof m.address };
        await e.close();
        console.log(JSON.stringify(out));
      })();`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { hasBuffer: boolean; byteLength: number; regions: number; address: string };
    expect(out.regions).toBe(1);
    expect(out.address).toBe('bigint');
    // A view when this Node can make one that large (Node >= 22), none on Node 20.
    if (SIZE > bufferConstants.MAX_LENGTH) expect(out.hasBuffer).toBe(false);
    else expect(out.byteLength).toBe(SIZE);
  });

  it('moves bytes at offsets past 4 GiB over TCP and the same-host path, bytes verified', async () => {
    const target = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    const tcp = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', sameHostFastPath: false });
    const shm = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const big = await target.allocateManagedBuffer(SIZE);
      expect(big.length).toBe(SIZE);
      if (SIZE > bufferConstants.MAX_LENGTH) expect(big.buffer).toBeUndefined();
      const data = randomBytes(1 << 20);
      const src = await tcp.registerMemory(Buffer.from(data));
      const back = await shm.registerMemory(Buffer.alloc(data.length));
      const high = SIZE - data.length - 4096; // past 4 GiB
      // WRITE over TCP into the top of the region, READ it back through shared memory.
      const segTcp = await tcp.openSegment(target.localServerName);
      await tcp.write(segTcp, [{ local: src, remote: segTcp.address(0, high, data.length), length: data.length }]);
      expect(target.stats().requestsServed).toBeGreaterThan(0);
      const segShm = await shm.openSegment(target.localServerName);
      await shm.read(segShm, [{ local: back, remote: segShm.address(0, high, data.length), length: data.length }]);
      expect(shm.stats().sameHostBytes).toBe(data.length);
      expect(back.buffer!.equals(data)).toBe(true);
      // The byte just past the window is still zero (no write landed 4 GiB lower or higher).
      const one = await shm.registerMemory(Buffer.alloc(4096, 0xff));
      await shm.read(segShm, [{ local: one, remote: segShm.address(0, high + data.length, 4096), length: 4096 }]);
      expect(one.buffer!.every((b) => b === 0)).toBe(true);
      await big.unregister();
      expect(target.stats().registeredRegions).toBe(0);
    } finally {
      await Promise.all([target.close(), tcp.close(), shm.close()]);
    }
  });

  it('a size above the machine memory is refused with MEMORY and registers nothing', async () => {
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const tooBig = os.totalmem() + GiB;
      await expect(engine.allocateManagedBuffer(tooBig)).rejects.toMatchObject({ code: 'MEMORY' });
      await expect(engine.allocateManagedBuffer(tooBig, { shareable: false })).rejects.toMatchObject({ code: 'MEMORY' });
      expect(engine.stats().registeredRegions).toBe(0);
    } finally {
      await engine.close();
    }
  });
});
