// Bad input gets its code and loses nothing: both engines keep working after every rejection.
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, StatusCodes, TransferEngine, type MemoryRegion, type Segment } from '../../lib';
import { UpstreamCompat } from '../../lib/compat';
import { loadNative } from '../../lib/engine/native';
import { Peer } from '../helpers/peer';
import { startPeerPair, type PeerPair } from '../helpers/peer-pair';

const MiB = 1 << 20;

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<MooncakeError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(MooncakeError);
  expect((err as MooncakeError).code).toBe(code);
  return err as MooncakeError;
}

describe('bad input', () => {
  let url: string;
  let peer: Peer;
  let engine: TransferEngine;
  let region: MemoryRegion;
  let seg: Segment;

  const stillWorks = async () => {
    const data = randomBytes(64 * 1024);
    data.copy(region.buffer!, 0);
    await engine.write(seg, [{ local: region, remote: seg.address(0, 0, data.length), length: data.length }]);
    region.buffer!.fill(0, 0, data.length);
    await engine.read(seg, [{ local: region, remote: seg.address(0, 0, data.length), length: data.length }]);
    expect(region.buffer!.subarray(0, data.length).equals(data)).toBe(true);
    expect(await peer.call('bytes', { offset: 0, length: 16 })).toBe(data.subarray(0, 16).toString('hex'));
  };

  let pair: PeerPair | undefined;

  beforeAll(async () => {
    pair = await startPeerPair({ memory: 4 * MiB });
    ({ url, peer, engine, region, seg } = pair);
  });

  afterAll(() => pair?.close());

  it('keeps the native status enum and the TypeScript codes in sync', () => {
    expect(loadNative().codeNames()).toEqual(StatusCodes);
  });

  it('engine methods refuse receivers that are not engines', () => {
    const { Engine } = loadNative();
    for (const receiver of [{}, new (class Other {})(), Object.create(Engine.prototype)]) {
      expect(() => (Engine.prototype as unknown as { stats(): unknown }).stats.call(receiver)).toThrow(TypeError);
    }
  });

  it('unknown segment', async () => {
    await expectCode(engine.openSegment('no-such-peer:1'), 'SEGMENT_NOT_FOUND');
    await stillWorks();
  });

  it('unregistered local address', async () => {
    const stray = Buffer.alloc(4096);
    const addr = BigInt(stray.byteOffset) + 0x10000000000n; // certainly not registered
    const err = await expectCode(engine.write(seg, [{ local: region, remote: seg.address(0), length: 8 }, { local: addr, remote: seg.address(0), length: 8 }]), 'ADDRESS_NOT_REGISTERED');
    expect(err.index).toBe(1);
    await stillWorks();
  });

  it('out-of-range remote address', async () => {
    const end = seg.buffers[0].address + BigInt(seg.buffers[0].length);
    await expectCode(engine.write(seg, [{ local: region, remote: end - 8n, length: 16 }]), 'INVALID_REMOTE_ADDRESS');
    await expectCode(engine.read(seg, [{ local: region, remote: 4096n, length: 16 }]), 'INVALID_REMOTE_ADDRESS');
    await expectCode(async () => seg.address(0, 4 * MiB, 1), 'INVALID_REMOTE_ADDRESS');
    await stillWorks();
  });

  it('zero, negative, fractional and oversized lengths', async () => {
    for (const length of [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 2, NaN]) {
      await expectCode(engine.write(seg, [{ local: region, remote: seg.address(0), length }]), 'INVALID_ARGUMENT');
    }
    await expectCode(engine.write(seg, [{ local: region, remote: seg.address(0), length: 8 * MiB }]), 'INVALID_ARGUMENT');
    await expectCode(engine.write(seg, []), 'INVALID_ARGUMENT');
    await expectCode(engine.write(seg, [{ local: region, remote: 5 as unknown as bigint, length: 8 }]), 'INVALID_ARGUMENT');
    await expectCode(engine.allocateManagedBuffer(0), 'INVALID_ARGUMENT');
    await stillWorks();
  });

  it('detached ArrayBuffers: refused at registration and at use', async () => {
    const ab = new ArrayBuffer(8192);
    structuredClone(ab, { transfer: [ab] });
    expect(ab.byteLength).toBe(0);
    await expectCode(engine.registerMemory(ab), 'INVALID_ARGUMENT');
    await expectCode(engine.registerMemory(Buffer.alloc(0)), 'INVALID_ARGUMENT');
    const ab2 = new ArrayBuffer(8192);
    const r2 = await engine.registerMemory(ab2);
    structuredClone(ab2, { transfer: [ab2] });
    await expectCode(engine.write(seg, [{ local: r2, remote: seg.address(0), length: 8 }]), 'INVALID_ARGUMENT');
    await stillWorks();
  });

  it('overlapping registration and unknown unregistration', async () => {
    const buf = Buffer.alloc(8192);
    const r = await engine.registerMemory(buf);
    await expectCode(engine.registerMemory(buf.subarray(4096)), 'ADDRESS_OVERLAPPED');
    await expectCode(engine.unregisterMemory(r.address + 8n), 'ADDRESS_NOT_REGISTERED');
    await r.unregister();
    expect(r.unregistered).toBe(true);
    await expectCode(engine.write(seg, [{ local: r, remote: seg.address(0), length: 8 }]), 'INVALID_ARGUMENT');
    await stillWorks();
  });

  it('malformed descriptor JSON in the metadata store', async () => {
    for (const [name, value] of [['garbage-1', '{not json'], ['garbage-2', '{"name":"x","protocol":"tcp","buffers":[{"addr":0,"length":1,"name":"x"}]}'], ['garbage-3', '[]']] as const) {
      await fetch(`${url}?key=${encodeURIComponent(`mooncake/ram/${name}`)}`, { method: 'PUT', body: value });
      await fetch(`${url}?key=${encodeURIComponent('mooncake/rpc_meta/x')}`, { method: 'PUT', body: '{"ip_or_host_name":"127.0.0.1","rpc_port":1}' });
      await expectCode(engine.openSegment(name), 'MALFORMED_JSON');
    }
    await stillWorks();
  });

  it('a segment of a protocol the built-in backend does not speak', async () => {
    await fetch(`${url}?key=${encodeURIComponent('mooncake/ram/rdma-peer')}`, { method: 'PUT', body: '{"buffers":[],"name":"x","protocol":"rdma","tcp_data_port":0}' });
    await expectCode(engine.openSegment('rdma-peer'), 'NOT_SUPPORTED_TRANSPORT');
    await stillWorks();
  });

  it('unregister is refused while a transfer uses the region', async () => {
    // A peer that accepts and never answers keeps the request in flight.
    const hung = net.createServer(() => undefined);
    await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r));
    const port = (hung.address() as net.AddressInfo).port;
    const desc = JSON.stringify({ buffers: [{ addr: 4096, length: MiB, name: 'hung' }], name: 'hung', protocol: 'tcp', tcp_data_port: port, tcp_proto_version: 2 });
    await fetch(`${url}?key=${encodeURIComponent('mooncake/ram/hung')}`, { method: 'PUT', body: desc });
    await fetch(`${url}?key=${encodeURIComponent('mooncake/rpc_meta/hung')}`, { method: 'PUT', body: '{"ip_or_host_name":"127.0.0.1","rpc_port":1}' });
    const hseg = await engine.openSegment('hung');
    const r = await engine.registerMemory(Buffer.alloc(4096));
    const ac = new AbortController();
    const p = engine.read(hseg, [{ local: r, remote: 4096n, length: 4096 }], { signal: ac.signal });
    await expectCode(engine.unregisterMemory(r), 'REGION_BUSY');
    ac.abort(new Error('enough'));
    const err = await expectCode(p, 'ABORT_ERR');
    expect(err.name).toBe('AbortError');
    await r.unregister();
    await expectCode(engine.read(hseg, [{ local: region, remote: 4096n, length: 4096 }], { timeoutMs: 100 }), 'TIMEOUT');
    hung.close();
    await stillWorks();
  });

  it('an already aborted signal rejects before anything starts', async () => {
    await expectCode(engine.write(seg, [{ local: region, remote: seg.address(0), length: 8 }], { signal: AbortSignal.abort() }), 'ABORT_ERR');
    await stillWorks();
  });

  it('bad options are INVALID_CONFIG', async () => {
    await expectCode(TransferEngine.create({} as never), 'INVALID_CONFIG');
    await expectCode(TransferEngine.create({ metadataServer: url, ioThreads: 0 }), 'INVALID_CONFIG');
    await expectCode(TransferEngine.create({ metadataServer: url, localServerName: 'a/b' }), 'INVALID_CONFIG');
    await expectCode(TransferEngine.create({ metadataServer: url, protocol: 'rdma' as never }), 'NOT_SUPPORTED_TRANSPORT');
  });

  it('metadata server down: creating and opening fail with METADATA', async () => {
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const port = (dead.address() as net.AddressInfo).port;
    await new Promise<void>((r) => dead.close(() => r()));
    const deadUrl = `http://127.0.0.1:${port}/metadata`;
    await expectCode(TransferEngine.create({ metadataServer: deadUrl, bindAddress: '127.0.0.1' }), 'METADATA');
    // An engine whose metadata server goes away cannot open new segments, but keeps its open ones.
    const meta2 = new MetadataServer({ logger: null });
    const { url: url2 } = await meta2.listen();
    const e2 = await TransferEngine.create({ metadataServer: url2, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1', metadataRefreshMs: 0 });
    try {
      await meta2.close();
      await expectCode(e2.openSegment(peer.info.name), 'METADATA');
    } finally {
      await e2.close();
    }
    await stillWorks();
  });
});

describe('use after close', () => {
  it('every call fails with CLOSED and close is idempotent', async () => {
    const meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    const region = await engine.registerMemory(Buffer.alloc(4096));
    const self = await engine.openSegment(engine.localServerName);
    await Promise.all([engine.close(), engine.close()]);
    await engine[Symbol.asyncDispose]();
    expect(engine.closed).toBe(true);
    await expectCode(engine.write(self, [{ local: region, remote: self.address(0), length: 8 }]), 'CLOSED');
    await expectCode(engine.registerMemory(Buffer.alloc(8)), 'CLOSED');
    await expectCode(engine.openSegment('x'), 'CLOSED');
    await expectCode(async () => new UpstreamCompat(engine).allocateBatch(4), 'CLOSED');
    // It deleted its metadata entries on close.
    expect([...meta.entries().keys()].filter((k) => k.includes(engine.localServerName))).toEqual([]);
    await meta.close();
  });
});
