// Liveness (opt-in `metadataTtlMs`): a live engine keeps its entries; a SIGKILLed one's entries
// disappear within about the TTL and opening it fails with SEGMENT_NOT_FOUND. Without the option,
// entries are plain keys that stay (upstream's behaviour). Peers run in child processes (dist/).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine } from '../../lib';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { eventually } from '../helpers/etcd';
import { metadataBackends, type RunningBackend } from '../helpers/metadata-backends';
import { Peer, pattern } from '../helpers/peer';

const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;
// dist/ must be built from this version (the peer fixture runs it); etcd-store.js came with metadataTtlMs.
const distReady = fs.existsSync(path.join(__dirname, '../../dist/index.js')) && fs.existsSync(path.join(__dirname, '../../dist/metadata/etcd-store.js'));
if (!distReady) console.warn('\n[metadata-liveness] SKIPPING: dist/ is missing; build with `npx tsc -p tsconfig.json` and `npm run build:native`\n');

/** metadataTtlMs per backend (etcd leases are whole seconds). */
const TTL = { http: 1500, etcd: 2000, redis: 1500 } as const;
const backends = metadataBackends('metadata-liveness');

for (const b of backends) {
  describe.skipIf(b.skip || !distReady)(`liveness on ${b.kind}`, () => {
    const ttlMs = TTL[b.kind];
    let backend: RunningBackend;
    let inspect: MetadataStore;
    const cleanups: (() => Promise<unknown>)[] = [];
    beforeAll(async () => {
      // The HTTP server expires what is not PUT again within its TTL; engines re-PUT every third of theirs.
      backend = await b.start({ httpTtlMs: ttlMs });
      inspect = createMetadataStore(backend.conn);
    });
    afterAll(async () => {
      await inspect?.close();
      await backend?.cleanup();
    });
    afterEach(async () => {
      while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
    });

    async function peer(name: string, options: Record<string, unknown>): Promise<Peer> {
      const p = await Peer.spawn({ metadataServer: backend.conn, localServerName: name, memory: 64 * 1024, pattern: 11, options });
      cleanups.push(async () => {
        p.kill();
        await p.exited;
      });
      return p;
    }

    it('a live engine keeps its entries past the TTL; once SIGKILLed they expire and opening it is SEGMENT_NOT_FOUND', async () => {
      const name = `live-${b.kind}`;
      const p = await peer(name, { metadataTtlMs: ttlMs });
      const a = await TransferEngine.create({ metadataServer: backend.conn, ...opts });
      cleanups.push(() => a.close());
      const mine = await a.registerMemory(Buffer.alloc(64 * 1024));
      const seg = await a.openSegment(name);
      await a.read(seg, [{ local: mine, remote: seg.address(0), length: 64 * 1024 }]);
      expect(mine.buffer!.equals(pattern(11, 64 * 1024))).toBe(true);

      // Two and a half TTLs later the entries are still there: the engine renews them.
      await new Promise((r) => setTimeout(r, ttlMs * 2.5));
      expect(await inspect.get(`mooncake/rpc_meta/${name}`)).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: p.info.rpcPort }));
      expect(await inspect.get(`mooncake/ram/${name}`)).toContain(`"name":"${name}"`);
      expect((await a.openSegment(name, { refresh: true })).buffers).toHaveLength(1);

      p.kill();
      await p.exited;
      const killedAt = Date.now();
      const gone = await eventually(
        async () => (await inspect.get(`mooncake/ram/${name}`)) === undefined && (await inspect.get(`mooncake/rpc_meta/${name}`)) === undefined,
        ttlMs * 3 + 10_000,
        100,
      );
      expect(gone).toBe(true);
      // "About the TTL": not kept for many TTLs (bounded loosely; two noisy cores).
      expect(Date.now() - killedAt).toBeLessThan(ttlMs * 3 + 10_000);
      await expect(a.openSegment(name, { refresh: true })).rejects.toMatchObject({ code: 'SEGMENT_NOT_FOUND' });
      await expect(a.openSegment(`${name}`, { refresh: true })).rejects.toThrow(/no segment named/);
    });

    if (b.kind !== 'http') {
      it('without metadataTtlMs the keys are plain, as upstream writes them: a SIGKILLed engine leaves them behind', async () => {
        const name = `plain-${b.kind}`;
        const p = await peer(name, {});
        p.kill();
        await p.exited;
        await new Promise((r) => setTimeout(r, ttlMs * 2));
        expect(await inspect.get(`mooncake/ram/${name}`)).toContain(`"name":"${name}"`);
        expect(await inspect.remove(`mooncake/ram/${name}`)).toBe(true);
        expect(await inspect.remove(`mooncake/rpc_meta/${name}`)).toBe(true);
      });
    }
  });
}
