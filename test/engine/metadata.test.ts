// What the engine writes to its metadata store, and how it keeps it there.
import { afterEach, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine } from '../../lib';
import { UpstreamCompat } from '../../lib/compat';

const MiB = 1 << 20;
const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function server(port = 0): Promise<{ meta: MetadataServer; url: string }> {
  const meta = new MetadataServer({ logger: null });
  const { url } = await meta.listen(port);
  cleanups.push(() => meta.close());
  return { meta, url };
}

async function engine(o: Parameters<typeof TransferEngine.create>[0]): Promise<TransferEngine> {
  const e = await TransferEngine.create(o);
  cleanups.push(() => e.close());
  return e;
}

describe('metadata publication', () => {
  it('writes upstream keys and a descriptor upstream peers parse', async () => {
    const { meta, url } = await server();
    const e = await engine({ metadataServer: url, localServerName: 'node-a', ...opts });
    const buf = Buffer.alloc(MiB);
    const r = await e.registerMemory(buf, { location: 'cpu:0' });
    const entries = meta.entries();
    expect(JSON.parse(entries.get('mooncake/rpc_meta/node-a')!)).toEqual({ ip_or_host_name: '127.0.0.1', rpc_port: e.rpcPort });
    const text = entries.get('mooncake/ram/node-a')!;
    // Compact, keys sorted, bare integers (the same shape upstream's jsoncpp writer produces).
    expect(text).toMatch(/^\{"buffers":\[\{"addr":\d+,"length":1048576,"name":"node-a"\}\],"name":"node-a","protocol":"tcp","tcp_data_host":"127\.0\.0\.1","tcp_data_port":\d+,"tcp_proto_version":2,"timestamp":"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"\}$/);
    expect(text).toContain(`"addr":${r.address}`);
    expect(text).toContain(`"tcp_data_port":${e.dataPort}`);
    await r.unregister();
    expect(meta.entries().get('mooncake/ram/node-a')).toContain('"buffers":[]');
  });

  it('republishes after the metadata server restarts empty', async () => {
    const first = await server();
    const port = Number(new URL(first.url).port);
    const e = await engine({ metadataServer: first.url, localServerName: 'node-r', metadataRefreshMs: 100, ...opts });
    await e.registerMemory(Buffer.alloc(4096));
    const before = first.meta.entries().get('mooncake/ram/node-r');
    await first.meta.close();
    const second = new MetadataServer({ logger: null });
    await second.listen(port);
    cleanups.push(() => second.close());
    // Wait (bounded) until the engine has noticed and written both entries back.
    for (let i = 0; i < 100 && (second.entries().size < 2 || e.stats().metadataRepublished < 1); i++) await new Promise((r) => setTimeout(r, 50));
    expect(second.entries().get('mooncake/rpc_meta/node-r')).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: e.rpcPort }));
    const noTime = (t: string | undefined) => t?.replace(/"timestamp":"[^"]*"/, '');
    expect(noTime(second.entries().get('mooncake/ram/node-r'))).toBe(noTime(before));
    expect(e.stats().metadataRepublished).toBeGreaterThanOrEqual(1);
    // And a fresh peer can open it there.
    const peer = await engine({ metadataServer: first.url, ...opts });
    const seg = await peer.openSegment('node-r');
    expect(seg.buffers).toHaveLength(1);
  });

  it('deletes rpc_meta and ram on close, and the name can be reused', async () => {
    const { meta, url } = await server();
    const e = await TransferEngine.create({ metadataServer: url, localServerName: 'node-c', ...opts });
    expect(meta.entries().has('mooncake/rpc_meta/node-c')).toBe(true);
    await e.close();
    expect(meta.entries().has('mooncake/rpc_meta/node-c')).toBe(false);
    expect(meta.entries().has('mooncake/ram/node-c')).toBe(false);
    const again = await engine({ metadataServer: url, localServerName: 'node-c', ...opts });
    expect(again.localServerName).toBe('node-c');
  });

  it('takes over a name left behind by a dead engine, but not one held by a live engine', async () => {
    const { url } = await server();
    // A crashed process left its rpc_meta (upstream's server refuses to overwrite it).
    await fetch(`${url}?key=mooncake%2Frpc_meta%2Fnode-d`, { method: 'PUT', body: JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: 1 }) });
    const e = await engine({ metadataServer: url, localServerName: 'node-d', ...opts });
    expect(e.localServerName).toBe('node-d');
    await expect(TransferEngine.create({ metadataServer: url, localServerName: 'node-d', ...opts })).rejects.toMatchObject({ code: 'METADATA' });
  });

  it('refreshes a segment whose owner registered more memory', async () => {
    const { url } = await server();
    const a = await engine({ metadataServer: url, ...opts });
    const b = await engine({ metadataServer: url, ...opts });
    const ra = await a.registerMemory(Buffer.alloc(8192));
    await b.registerMemory(Buffer.alloc(4096));
    const seg = await a.openSegment(b.localServerName);
    expect(seg.buffers).toHaveLength(1);
    const later = await b.registerMemory(Buffer.alloc(4096));
    later.buffer!.fill(9);
    // The cached descriptor does not know the new buffer; the engine looks again once.
    await a.read(seg, [{ local: ra, remote: later.address, length: 4096 }]);
    expect(seg.buffers).toHaveLength(2);
    expect(ra.buffer!.subarray(0, 4096).every((x) => x === 9)).toBe(true);
  });
});

describe('P2PHANDSHAKE mode', () => {
  it('opens peers by ip:rpcPort with no metadata server', async () => {
    const a = await engine({ metadataServer: 'P2PHANDSHAKE', ...opts });
    const b = await engine({ metadataServer: 'P2PHANDSHAKE', ...opts });
    expect(b.localServerName).toBe(`127.0.0.1:${b.rpcPort}`);
    const ra = await a.registerMemory(Buffer.alloc(MiB));
    const rb = await b.allocateManagedBuffer(MiB);
    rb.buffer!.fill(3);
    const seg = await a.openSegment(b.localServerName);
    expect(seg.buffers[0].address).toBe(rb.address);
    await a.read(seg, [{ local: ra, remote: seg.address(0), length: MiB }]);
    expect(ra.buffer!.every((x) => x === 3)).toBe(true);
  });
});

describe('upstream batch model and notifications between Node engines', () => {
  it('allocate / submit / status / free', async () => {
    const { url } = await server();
    const a = await engine({ metadataServer: url, ...opts });
    const b = await engine({ metadataServer: url, ...opts });
    const ra = await a.registerMemory(Buffer.alloc(MiB));
    const rb = await b.registerMemory(Buffer.alloc(MiB));
    ra.buffer!.fill(5, 0, 4096);
    const seg = await a.openSegment(b.localServerName);
    const te = new UpstreamCompat(a);
    const batch = te.allocateBatch(4);
    te.submitTransfer(batch, [
      { opcode: 'write', segment: seg, local: ra, remote: seg.address(0), length: 4096 },
      { opcode: 'read', segment: seg, local: ra, localOffset: 8192, remote: seg.address(0, 4096), length: 4096 },
    ]);
    expect(() => te.submitTransfer(batch, Array.from({ length: 3 }, () => ({ opcode: 'write' as const, segment: seg, local: ra, remote: seg.address(0), length: 8 })))).toThrow(expect.objectContaining({ code: 'TOO_MANY_REQUESTS' }));
    for (let t = 0; t < 2; t++) {
      let s = te.getTransferStatus(batch, t);
      for (let i = 0; i < 500 && s.status === 'WAITING'; i++) {
        await new Promise((r) => setTimeout(r, 5));
        s = te.getTransferStatus(batch, t);
      }
      expect(s).toEqual({ status: 'COMPLETED', transferredBytes: 4096 });
    }
    expect(te.getBatchTransferStatus(batch)).toEqual({ status: 'COMPLETED', transferredBytes: 8192 });
    expect(() => te.getTransferStatus(batch, 9)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    te.freeBatch(batch);
    expect(() => te.freeBatch(batch)).toThrow(expect.objectContaining({ code: 'BATCH_NOT_FOUND' }));
    expect(rb.buffer!.subarray(0, 4096).every((x) => x === 5)).toBe(true);
  });

  it('sends notifies and receives them as events, iterator and drain', async () => {
    const { url } = await server();
    const a = await engine({ metadataServer: url, ...opts });
    const b = await engine({ metadataServer: url, ...opts });
    const seen: string[] = [];
    b.on('notify', (n) => seen.push(n.msg));
    const it = b.notifies();
    await a.sendNotify(b.localServerName, { name: 'req-1', msg: 'done' });
    expect((await it.next()).value).toEqual({ name: 'req-1', msg: 'done' });
    await a.sendNotify(b.localServerName, { name: 'req-2', msg: 'also' });
    expect(seen).toEqual(['done', 'also']);
    await it.return?.();
    expect(b.getNotifies()).toEqual([{ name: 'req-2', msg: 'also' }]);
  });
});
