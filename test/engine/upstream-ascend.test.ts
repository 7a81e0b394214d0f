// backend: 'mooncake', protocol 'ascend': upstream's real Ascend Direct transport from the pinned npu
// wheel, run end to end through mooncake-node on CANN STAND-INS (test/native/standin/: ACL with device
// memory unaddressable from the host, ADXL moving bytes between processes over TCP). This process holds
// npu:0; a peer process (test/fixtures/peer.cjs) holds npu:1 with ASCEND_RT_VISIBLE_DEVICES=4,5 (so its
// physical id is 5), and a Python peer runs the same wheel's `mooncake.engine` as vllm-ascend does. Every
// ADXL call the transport makes is logged by the stand-in and checked here.
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpMetadataStore, MetadataServer, MooncakeError, TransferEngine, segmentKey } from '../../lib';
import type { MemoryRegion } from '../../lib/engine/memory';
import type { Segment } from '../../lib/engine/segment';
import { cannStandinDir } from '../helpers/ascend-standin';
import { Peer } from '../helpers/peer';
import { upstreamNpu } from '../helpers/upstream';
import { TePeer } from '../interop/peers/te-peer';

const MiB = 1 << 20;
const SIZES = [1, 7, 4096, 65_536 + 3, MiB, 16 * MiB];
const STALL = 777_777; // the peer's ADXL stand-in never answers a request of this length
const npu = upstreamNpu();
const skipReason = 'skipReason' in npu ? npu.skipReason : undefined;
if (skipReason) console.warn(`\n[upstream ascend] SKIPPED the ascend-transport suite: ${skipReason}\n`);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
interface AdxlEvent { pid: number; event: string; engine: string; status: number; [k: string]: unknown }

describe.skipIf(skipReason !== undefined)("upstream's Ascend Direct transport on CANN stand-ins, through mooncake-node", () => {
  const log = path.join(os.tmpdir(), `mooncake-adxl-${process.pid}.jsonl`);
  const basePort = 21000 + (process.pid % 40) * 250; // ASCEND_BASE_PORT: ADXL listens in [base + phy*100, base + (phy+1)*100]
  let lib: string;
  let meta: MetadataServer;
  let url: string;
  let engine: TransferEngine;
  let dev: MemoryRegion;
  let peer: Peer;
  let seg: Segment;
  let common: Record<string, unknown>;
  const events = (): AdxlEvent[] => fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as AdxlEvent);

  beforeAll(async () => {
    if ('skipReason' in npu) return;
    lib = path.join(cannStandinDir(), 'libascendcl.so');
    fs.rmSync(log, { force: true });
    Object.assign(process.env, {
      MC_TCP_BIND_ADDRESS: '127.0.0.1', ADXL_STANDIN_LOG: log, ASCEND_BASE_PORT: String(basePort),
      ASCEND_CONNECT_TIMEOUT: '1500', ASCEND_TRANSFER_TIMEOUT: '1500',
    });
    delete process.env.MC_FORCE_TCP;
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
    common = { backend: 'mooncake', protocol: 'ascend', python: npu.python, ascendRuntimeLibrary: lib, metadataServer: url };
    engine = await TransferEngine.create({ ...common, localServerName: '127.0.0.2', device: 'npu:0' } as never);
    dev = await engine.allocateDeviceMemory('npu:0', 40 * MiB);
    peer = await Peer.spawn({ metadataServer: url, localServerName: '127.0.0.3', memory: 40 * MiB, device: 'npu:1', options: { ...common, device: 'npu:1' } }, 60_000, {
      ASCEND_RT_VISIBLE_DEVICES: '4,5', ADXL_STANDIN_STALL_LEN: String(STALL),
    });
    seg = await engine.openSegment('127.0.0.3');
  }, 120_000);

  afterAll(async () => {
    await peer?.close();
    await engine?.close();
    await meta?.close();
    fs.rmSync(log, { force: true });
  });

  it('loads the npu wheel bound in full, its Ascend transport ready on the stand-ins', () => {
    expect(engine.upstream).toMatchObject({ source: 'wheel', lazyBinding: false, forceTcp: false, ascendTransport: 'ready' });
    expect(engine.upstream!.cann.map((c) => [c.name, c.standin])).toEqual([['libascendcl.so', 'acl'], ['libllm_datadist.so', 'adxl'], ['libmetadef.so', 'metadef']]);
  });

  it('publishes ascend segments: ADXL endpoints in the port range of each physical NPU, 2 MiB-aligned device buffers', async () => {
    const store = new HttpMetadataStore(url);
    try {
      const theirs = JSON.parse((await store.get(segmentKey('127.0.0.3')))!) as { protocol: string; rank_info: { endpoints: string[] }; buffers: { addr: number; device_id: number }[] };
      expect(theirs.protocol).toBe('ascend');
      const port = Number(theirs.rank_info.endpoints[0]!.split(':')[1]);
      expect(port).toBeGreaterThanOrEqual(basePort + 500); // logical npu:1 is physical 5
      expect(port).toBeLessThanOrEqual(basePort + 600);
      expect(seg.protocol).toBe('ascend');
      expect(seg.buffers[0]!.address).toBe(peer.info.address);
      expect(peer.info.address % BigInt(2 * MiB)).toBe(0n);
      const ours = JSON.parse((await store.get(segmentKey('127.0.0.2')))!) as { rank_info: { endpoints: string[] } };
      const mine = Number(ours.rank_info.endpoints[0]!.split(':')[1]);
      expect(mine >= basePort && mine <= basePort + 100).toBe(true);
    } finally {
      await store.close();
    }
    const init = events().filter((e) => e.event === 'initialize');
    expect(init.map((e) => [e.device, e.phy]).sort()).toEqual([[0, 0], [1, 5]]);
    expect(init.every((e) => e.status === 0 && (e.options as Record<string, string>).AutoConnect === '1')).toBe(true);
    const regs = events().filter((e) => e.event === 'register' && e.type === 'device');
    expect(regs.length).toBeGreaterThanOrEqual(2);
    expect(regs.every((e) => (e.addr as number) % (2 * MiB) === 0 && e.status === 0)).toBe(true);
  });

  it('device memory to device memory both ways, 1 B … 16 MiB, initiated from each side', async () => {
    for (const n of SIZES) {
      const data = randomBytes(n);
      await engine.copyToDevice(dev, 5, data);
      await engine.write(seg, [{ local: dev, localOffset: 5, remote: seg.address(0, 4099, n), length: n }]);
      expect(await peer.call('sha256', { offset: 4099, length: n })).toBe(sha(data));
      await engine.read(seg, [{ local: dev, localOffset: 20 * MiB, remote: seg.address(0, 4099, n), length: n }]);
      const back = Buffer.alloc(n);
      await engine.copyFromDevice(dev, 20 * MiB, back);
      expect(sha(back)).toBe(sha(data));
      // The peer initiates: it writes our device memory, then reads it back into its own.
      await peer.call('fill', { offset: 0, length: n, seed: n });
      await peer.call('write', { target: '127.0.0.2', requests: [{ localOffset: 0, remoteOffset: 24 * MiB, length: n }] });
      const got = Buffer.alloc(n);
      await engine.copyFromDevice(dev, 24 * MiB, got);
      expect(sha(got)).toBe(await peer.call('sha256', { offset: 0, length: n }));
      await peer.call('read', { target: '127.0.0.2', requests: [{ localOffset: 20 * MiB, remoteOffset: 5, length: n }] });
      expect(await peer.call('sha256', { offset: 20 * MiB, length: n })).toBe(sha(data));
    }
    const moved = events().filter((e) => e.event === 'transfer' && e.status === 0).reduce((a, e) => a + (e.bytes as number), 0);
    expect(moved).toBeGreaterThanOrEqual(4 * SIZES.reduce((a, b) => a + b, 0)); // every byte went through ADXL
  });

  it('a batch of 64 scattered requests in one TransferSync, and host memory registered beside device memory', async () => {
    const lens = Array.from({ length: 64 }, (_, i) => 1 + ((i * 2654435761) % 100_000));
    const offs: number[] = [];
    lens.reduce((at, n) => (offs.push(at), at + n + 13), 0);
    const data = randomBytes(offs[63]! + lens[63]!);
    await engine.copyToDevice(dev, 0, data);
    const before = events().length;
    await engine.write(seg, lens.map((n, i) => ({ local: dev, localOffset: offs[i]!, remote: seg.address(0, offs[i]! + 3, n), length: n })));
    const syncs = events().slice(before).filter((e) => e.event === 'transfer');
    expect(syncs.map((e) => e.requests)).toEqual([64]);
    for (let i = 0; i < 64; i += 9) expect(await peer.call('sha256', { offset: offs[i]! + 3, length: lens[i]! })).toBe(sha(data.subarray(offs[i]!, offs[i]! + lens[i]!)));
    const host = await engine.registerMemory(Buffer.alloc(MiB), { location: 'cpu:0' });
    randomBytes(MiB).copy(host.buffer!);
    await engine.write(seg, [{ local: host, remote: seg.address(0, 0, MiB), length: MiB }]);
    expect(await peer.call('sha256', { offset: 0, length: MiB })).toBe(sha(host.buffer!));
    expect(events().some((e) => e.event === 'register' && e.type === 'host' && e.status === 0)).toBe(true);
  });

  it("a transfer to the engine's own segment takes upstream's local copy path (ACL stream copies), not ADXL", async () => {
    const self = await engine.openSegment('127.0.0.2');
    const data = randomBytes(3 * MiB + 1);
    await engine.copyToDevice(dev, 0, data);
    const before = events().length;
    await engine.write(self, [{ local: dev, remote: dev.address + BigInt(32 * MiB), length: data.length }]);
    const back = Buffer.alloc(data.length);
    await engine.copyFromDevice(dev, 32 * MiB, back);
    expect(sha(back)).toBe(sha(data));
    expect(events().slice(before).filter((e) => e.event === 'transfer')).toEqual([]);
  });

  it('needs the device context: an ascend engine without `device` is refused, and unaligned NPU memory is not registered', async () => {
    const err = await TransferEngine.create({ ...common, localServerName: '127.0.0.4' } as never).catch((e: MooncakeError) => e);
    expect(err).toMatchObject({ code: 'CONTEXT' });
    expect((err as MooncakeError).message).toMatch(/device: 'npu:N'/);
    const other = await engine.allocateDeviceMemory('npu:0', 4 * MiB);
    await engine.unregisterMemory(other);
    await expect(engine.registerMemory({ address: other.address + 4096n, length: MiB }, { location: 'npu:0' })).rejects.toBeInstanceOf(MooncakeError);
  });

  it('maps ADXL timeouts to TIMEOUT (with timeoutMs) and recovers; explicit Connect when auto-connect is off', async () => {
    const t0 = Date.now();
    await expect(engine.write(seg, [{ local: dev, remote: seg.address(0), length: STALL }], { timeoutMs: 300 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500); // upstream cannot recall it: settles after ADXL gave up
    expect(events().some((e) => e.event === 'transfer' && e.status === 103901)).toBe(true);
    await expect(engine.write(seg, [{ local: dev, remote: seg.address(0), length: STALL }])).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    const data = randomBytes(1000);
    await engine.copyToDevice(dev, 0, data);
    await engine.write(seg, [{ local: dev, remote: seg.address(0, 0, 1000), length: 1000 }]);
    expect(await peer.call('sha256', { offset: 0, length: 1000 })).toBe(sha(data));
    // ASCEND_AUTO_CONNECT=0: upstream calls Connect itself before TransferSync.
    process.env.ASCEND_AUTO_CONNECT = '0';
    const explicit = await TransferEngine.create({ ...common, localServerName: '127.0.0.5', device: 'npu:0' } as never).finally(() => delete process.env.ASCEND_AUTO_CONNECT);
    try {
      const mem = await explicit.allocateDeviceMemory('npu:0', 2 * MiB);
      await explicit.copyToDevice(mem, 0, data);
      const s = await explicit.openSegment('127.0.0.3');
      await explicit.write(s, [{ local: mem, remote: s.address(0, 5 * MiB, 1000), length: 1000 }]);
      expect(await peer.call('sha256', { offset: 5 * MiB, length: 1000 })).toBe(sha(data));
      const mine = events().filter((e) => e.engine.startsWith('127.0.0.5:'));
      expect(mine.find((e) => e.event === 'initialize')!.options).toMatchObject({ AutoConnect: '0' });
      expect(mine.some((e) => e.event === 'connect' && e.status === 0)).toBe(true);
    } finally {
      await explicit.close();
    }
  });

  it("a Python peer on the npu wheel (vllm-ascend's side: mooncake.engine, protocol 'ascend') exchanges NPU memory with mooncake-node", async () => {
    const py = await TePeer.start({ LD_LIBRARY_PATH: path.dirname(lib) }, 60_000, (npu as { python: string }).python);
    try {
      await py.call({ cmd: 'npu_set_device', device: 1 }); // as torch.npu.set_device before initialize
      await py.call({ cmd: 'init', mode: 'http', name: '127.0.0.6', metadata_url: url, protocol: 'ascend' });
      const pyDev = BigInt((await py.call({ cmd: 'npu_alloc', size: 20 * MiB })).addr as string);
      const s = await engine.openSegment('127.0.0.6');
      expect(s.protocol).toBe('ascend');
      const data = randomBytes(9 * MiB + 5);
      await engine.copyToDevice(dev, 0, data);
      await engine.write(s, [{ local: dev, remote: pyDev + 77n, length: data.length }]);
      expect((await py.call({ cmd: 'npu_sha256', ranges: [[(pyDev + 77n).toString(), data.length]] })).sha256).toEqual([sha(data)]);
      const [theirs] = (await py.call({ cmd: 'npu_fill', ranges: [[(pyDev + BigInt(10 * MiB)).toString(), 3 * MiB]] })).sha256 as string[];
      expect(await py.transfer('127.0.0.2', 'write', pyDev + BigInt(10 * MiB), dev.address + BigInt(12 * MiB), 3 * MiB)).toBe(0);
      const got = Buffer.alloc(3 * MiB);
      await engine.copyFromDevice(dev, 12 * MiB, got);
      expect(sha(got)).toBe(theirs);
      expect(await py.transfer('127.0.0.2', 'read', pyDev, dev.address, 4096)).toBe(0);
      expect((await py.call({ cmd: 'npu_sha256', ranges: [[pyDev.toString(), 4096]] })).sha256).toEqual([sha(data.subarray(0, 4096))]);
      const pids = new Set(events().filter((e) => e.event === 'transfer' && e.status === 0).map((e) => e.pid));
      expect(pids.size).toBeGreaterThanOrEqual(3); // this process, the Node peer and the Python peer all moved bytes through ADXL
    } finally {
      await py.stop();
    }
  });

  it('maps a vanished peer (ADXL not connected, then connect refused) to CONNECTION_LOST', async () => {
    peer.kill();
    await peer.close(5000);
    await expect(engine.write(seg, [{ local: dev, remote: seg.address(0), length: 4096 }], { timeoutMs: 10_000 })).rejects.toMatchObject({ code: 'CONNECTION_LOST' });
    const last = events().filter((e) => e.engine.startsWith('127.0.0.2:') && (e.event === 'transfer' || e.event === 'connect')).slice(-3);
    expect(last.some((e) => e.status === 103902 || e.status === 503900)).toBe(true);
  });
});
