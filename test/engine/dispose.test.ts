// Symbol.asyncDispose on the engine, the metadata server and memory regions: `await using` releases each
// once, in reverse order, and disposing twice (or after an explicit close/unregister) is harmless.
import * as os from 'node:os';
import { describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine } from '../../lib';
import { rawRequest } from '../helpers/raw-http';

const loopback = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;

describe('asyncDispose', () => {
  it('`await using` unregisters the region, closes the engine and the metadata server', async () => {
    let port = 0;
    let engineRef: TransferEngine | undefined;
    let regionAddress = 0n;
    {
      await using meta = new MetadataServer({ logger: null });
      const { url } = await meta.listen();
      port = Number(new URL(url).port);
      await using engine = await TransferEngine.create({ metadataServer: url, ...loopback });
      engineRef = engine;
      {
        await using region = await engine.registerMemory(Buffer.alloc(4096));
        regionAddress = region.address;
        expect(engine.memoryRegions.map((r) => r.address)).toEqual([regionAddress]);
      }
      // The region's scope ended: it is unregistered, and its descriptor no longer lists it.
      expect(engine.memoryRegions).toEqual([]);
      const desc = JSON.parse((await rawRequest(port, 'GET', `/metadata?key=${encodeURIComponent(`mooncake/ram/${engine.localServerName}`)}`)).body.toString()) as { buffers: unknown[] };
      expect(desc.buffers).toEqual([]);
    }
    await expect(engineRef!.openSegment('x')).rejects.toMatchObject({ code: 'CLOSED' });
    await expect(rawRequest(port, 'GET', '/metadata?key=x', undefined, {}, 2000)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('is idempotent, and safe after close() / unregister()', async () => {
    const meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    const engine = await TransferEngine.create({ metadataServer: url, ...loopback });
    const a = await engine.registerMemory(Buffer.alloc(4096));
    const b = await engine.allocateManagedBuffer(4096);
    await Promise.all([a[Symbol.asyncDispose](), a[Symbol.asyncDispose]()]);
    await a[Symbol.asyncDispose]();
    expect(a.unregistered).toBe(true);
    await b.unregister();
    await b[Symbol.asyncDispose]();
    const c = await engine.registerMemory(Buffer.alloc(4096));
    await engine[Symbol.asyncDispose]();
    await engine[Symbol.asyncDispose]();
    await c[Symbol.asyncDispose](); // the engine closed: nothing left to do
    expect(c.unregistered).toBe(true);
    await meta.close();
    await meta[Symbol.asyncDispose]();
    await expect(meta.listen()).rejects.toMatchObject({ code: 'CLOSED' });
  });

  it('a region larger than the machine is refused with a code, not a crash (larger than a Buffer works: large-managed.test.ts)', async () => {
    await using engine = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', ...loopback });
    const err = await engine.allocateManagedBuffer(os.totalmem() + 2 ** 30).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MooncakeError);
    expect((err as MooncakeError).code).toBe('MEMORY');
    expect(engine.stats().registeredRegions).toBe(0);
  });
});
