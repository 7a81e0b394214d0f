// Engines publishing to, finding each other through, and moving bytes via etcd and redis metadata
// backends (real servers started on loopback), including backend restarts and cluster ids.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine, type MooncakeError } from '../../lib';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { eventually, startEtcd } from '../helpers/etcd';
import { metadataBackends, type RunningBackend } from '../helpers/metadata-backends';
import { freePort } from '../helpers/server-process';

const MiB = 1 << 20;
const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;

const backends = metadataBackends('metadata-backends', ['etcd', 'redis']);

for (const b of backends) {
  describe.skipIf(b.skip)(`engines on ${b.kind}`, () => {
    let backend: RunningBackend;
    let inspect: MetadataStore;
    const cleanups: (() => Promise<unknown>)[] = [];
    const savedCluster = process.env.MC_METADATA_CLUSTER_ID;
    beforeAll(async () => {
      backend = await b.start();
      inspect = createMetadataStore(backend.conn);
    });
    afterAll(async () => {
      await inspect?.close();
      await backend?.cleanup();
    });
    afterEach(async () => {
      while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
      if (savedCluster === undefined) delete process.env.MC_METADATA_CLUSTER_ID;
      else process.env.MC_METADATA_CLUSTER_ID = savedCluster;
    });

    async function engine(o: Partial<Parameters<typeof TransferEngine.create>[0]> = {}): Promise<TransferEngine> {
      const e = await TransferEngine.create({ metadataServer: backend.conn, ...opts, ...o });
      cleanups.push(() => e.close());
      return e;
    }

    it('publishes upstream keys, opens peers and moves bytes both ways; close deletes the keys', async () => {
      const a = await engine({ localServerName: `${b.kind}-a` });
      const z = await engine({ localServerName: `${b.kind}-z` });
      const ra = await a.registerMemory(Buffer.alloc(MiB));
      const rz = await z.allocateManagedBuffer(MiB);
      // Exactly what upstream peers look up: plain keys, the same JSON as over HTTP.
      expect(await inspect.get(`mooncake/rpc_meta/${b.kind}-z`)).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: z.rpcPort }));
      const desc = JSON.parse((await inspect.get(`mooncake/ram/${b.kind}-z`))!) as { name: string; protocol: string; buffers: { addr: number }[] };
      expect(desc).toMatchObject({ name: `${b.kind}-z`, protocol: 'tcp', tcp_data_port: z.dataPort });
      expect(BigInt(desc.buffers[0].addr)).toBe(rz.address);

      const seg = await a.openSegment(`${b.kind}-z`);
      ra.buffer!.fill(0x5a);
      await a.write(seg, [{ local: ra, remote: seg.address(0), length: MiB }]);
      expect(rz.buffer!.every((x) => x === 0x5a)).toBe(true);
      rz.buffer!.fill(0xa5, 0, 4096);
      await a.read(seg, [{ local: ra, remote: seg.address(0), length: 4096 }]);
      expect(ra.buffer!.subarray(0, 4096).every((x) => x === 0xa5)).toBe(true);

      await z.close();
      expect(await inspect.get(`mooncake/rpc_meta/${b.kind}-z`)).toBeUndefined();
      expect(await inspect.get(`mooncake/ram/${b.kind}-z`)).toBeUndefined();
      await expect(a.openSegment(`${b.kind}-gone`)).rejects.toMatchObject({ code: 'SEGMENT_NOT_FOUND' });
    });

    it('MC_METADATA_CLUSTER_ID namespaces the keys: same cluster finds the peer, another does not', async () => {
      process.env.MC_METADATA_CLUSTER_ID = 'blue';
      const a = await engine({ localServerName: `${b.kind}-blue` });
      await a.registerMemory(Buffer.alloc(4096));
      expect(await inspect.get(`mooncake/blue/rpc_meta/${b.kind}-blue`)).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: a.rpcPort }));
      expect(await inspect.get(`mooncake/blue/ram/${b.kind}-blue`)).toContain(`"name":"${b.kind}-blue"`);
      expect(await inspect.get(`mooncake/ram/${b.kind}-blue`)).toBeUndefined();
      const peer = await engine();
      expect((await peer.openSegment(`${b.kind}-blue`)).buffers).toHaveLength(1);
      process.env.MC_METADATA_CLUSTER_ID = 'green/';
      await expect(peer.openSegment(`${b.kind}-blue`, { refresh: true })).rejects.toMatchObject({
        code: 'SEGMENT_NOT_FOUND',
        details: { key: `mooncake/green/ram/${b.kind}-blue` },
      });
    });

    it('a backend that is down: create() fails with METADATA in bounded time', async () => {
      const port = await freePort();
      const conn = b.kind === 'etcd' ? `etcd://127.0.0.1:${port}` : `redis://127.0.0.1:${port}`;
      const t0 = Date.now();
      const err = (await TransferEngine.create({ metadataServer: conn, ...opts, metadataTimeoutMs: 2000 }).catch((e: unknown) => e)) as MooncakeError;
      expect(err.code).toBe('METADATA');
      expect(err.details).toMatchObject({ backend: b.kind });
      expect(Date.now() - t0).toBeLessThan(2000 * 2 + 3000);
    });

    it('the backend restarts empty: engines report errors meanwhile, then republish; peers find them again', async () => {
      const errors: MooncakeError[] = [];
      const a = await engine({ localServerName: `${b.kind}-r`, metadataRefreshMs: 200, metadataTimeoutMs: 1500 });
      a.on('metadataError', (e) => errors.push(e));
      const ra = await a.registerMemory(Buffer.alloc(64 * 1024));
      ra.buffer!.fill(7);
      await backend.stop();
      expect(await eventually(() => errors.length > 0, 15_000)).toBe(true);
      expect(errors[0].code).toBe('METADATA');
      expect(errors[0].details).toMatchObject({ backend: b.kind });
      await backend.restartEmpty();
      await inspect.close();
      inspect = createMetadataStore(backend.conn);
      expect(await eventually(async () => (await inspect.get(`mooncake/ram/${b.kind}-r`)) !== undefined, 30_000, 100)).toBe(true);
      expect(await inspect.get(`mooncake/rpc_meta/${b.kind}-r`)).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: a.rpcPort }));
      expect(a.stats().metadataRepublished).toBeGreaterThanOrEqual(1);
      const peer = await engine();
      const seg = await peer.openSegment(`${b.kind}-r`);
      const mine = await peer.registerMemory(Buffer.alloc(64 * 1024));
      await peer.read(seg, [{ local: mine, remote: seg.address(0), length: 64 * 1024 }]);
      expect(mine.buffer!.every((x) => x === 7)).toBe(true);
    });
  });
}

describe.skipIf(backends[0].skip)('engines on etcd: a restart that keeps the data', () => {
  it('entries survive, the engine keeps working through the same client', async () => {
    const etcd = await startEtcd();
    const cleanups: (() => Promise<unknown>)[] = [];
    try {
      const a = await TransferEngine.create({ metadataServer: etcd.connectionString, localServerName: 'kept-a', metadataRefreshMs: 200, metadataTimeoutMs: 1500, ...opts });
      cleanups.push(() => a.close());
      a.on('metadataError', () => undefined);
      await a.registerMemory(Buffer.alloc(4096));
      await etcd.members[0].restart();
      const b = await TransferEngine.create({ metadataServer: etcd.connectionString, ...opts });
      cleanups.push(() => b.close());
      expect((await b.openSegment('kept-a')).buffers).toHaveLength(1);
      // The restarted server still has the registration published before the restart, and a new one lands.
      const registered = await eventually(async () => {
        try {
          await a.registerMemory(Buffer.alloc(4096));
          return true;
        } catch {
          return false;
        }
      }, 20_000, 200);
      expect(registered).toBe(true);
      expect((await b.openSegment('kept-a', { refresh: true })).buffers.length).toBeGreaterThanOrEqual(2);
    } finally {
      while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
      await etcd.stop();
    }
  });
});
