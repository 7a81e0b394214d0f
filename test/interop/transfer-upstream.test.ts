/**
 * Data-plane interop with the real upstream engine (PyPI mooncake-transfer-engine-non-cuda
 * 0.3.13.post1, `mooncake.engine.TransferEngine`, driven through test/interop/peers/te_peer.py).
 * Writes, reads, batches, notifies and segment refreshes (docs/interop.md, checks 1–4 and 7), each in three worlds:
 *
 * - both engines on **our** MetadataServer;
 * - both engines on **upstream's** `mooncake_http_metadata_server`;
 * - **P2PHANDSHAKE** (no store: descriptors travel over the handshake socket, segment names are
 *   `ip:rpcPort`).
 *
 * In each: each side opens the other's descriptor; Node writes and reads upstream memory (1 B … 16 MiB,
 * single and batched, bytes checked by sha256 in the Python process), upstream writes and reads Node
 * memory (`transfer_sync` / `batch_transfer_sync`, checked in Node); notifications both ways.
 * Offsets are deliberately unaligned, and both sides use two kinds of memory (Node: a JS Buffer and an
 * engine-allocated buffer; Python: allocate_managed_buffer and its own ctypes memory + register_memory).
 */
import { once } from 'node:events';
import { createHash, randomFillSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine } from '../../lib/engine';
import type { MemoryRegion } from '../../lib/engine/memory';
import { HttpMetadataStore, MetadataServer, rpcMetaKey, segmentKey } from '../../lib/metadata';
import type { Segment } from '../../lib/engine/segment';
import { SETUP_COMMAND, UPSTREAM_VERSION, spawnUpstreamMetadataServer, upstreamPeer, type UpstreamMetadataServer } from '../helpers/upstream';
import { TePeer, stopAllTePeers } from './peers/te-peer';

const up = upstreamPeer();
const skipReason = 'skipReason' in up ? up.skipReason : undefined;
if (skipReason) {
  console.warn(
    `\n[transfer-upstream] SKIPPING the upstream data-plane interop suite: ${skipReason}\n` +
      `[transfer-upstream] Install the upstream peer (mooncake-transfer-engine-non-cuda ${UPSTREAM_VERSION}) with: bash ${SETUP_COMMAND}   (or set MOONCAKE_UPSTREAM_VENV)\n`,
  );
}

const MiB = 1 << 20;
/** 1 B … 16 MiB, odd sizes included. */
const SIZES = [1, 7, 4096, 65_536 + 3, MiB, 16 * MiB];
const NODE_MAIN = 40 * MiB; // JS Buffer
const NODE_MANAGED = 20 * MiB; // allocateManagedBuffer
const PY_MAIN = 40 * MiB; // allocate_managed_buffer
const PY_REG = 20 * MiB; // ctypes + register_memory
const L_OFF = 77; // unaligned local offset
const R_OFF = 4099; // unaligned remote offset

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sizeLabel = (n: number): string => (n >= MiB ? `${n / MiB} MiB` : n >= 1024 ? `${(n / 1024).toFixed(n % 1024 ? 1 : 0)} KiB` : `${n} B`);

afterAll(async () => {
  await stopAllTePeers();
});

interface World {
  metadata: string;
  node: TransferEngine;
  nodeMain: MemoryRegion;
  nodeManaged: MemoryRegion;
  py: TePeer;
  pyMain: bigint;
  pyReg: bigint;
  /** Node's view of the Python segment. */
  seg: Segment;
  ours?: MetadataServer;
  theirs?: UpstreamMetadataServer;
}

type Kind = 'ours' | 'upstream' | 'p2p';
const WORLDS: { kind: Kind; label: string }[] = [
  { kind: 'ours', label: 'HTTP metadata: our MetadataServer' },
  { kind: 'upstream', label: "HTTP metadata: upstream's mooncake_http_metadata_server" },
  { kind: 'p2p', label: 'P2PHANDSHAKE' },
];

let worldCount = 0;

async function makeWorld(kind: Kind): Promise<World> {
  const w: Partial<World> = {};
  const n = ++worldCount;
  if (kind === 'ours') {
    w.ours = new MetadataServer({ logger: null });
    w.metadata = (await w.ours.listen(0, '127.0.0.1')).url;
  } else if (kind === 'upstream') {
    w.theirs = await spawnUpstreamMetadataServer();
    w.metadata = w.theirs.url;
  } else {
    w.metadata = 'P2PHANDSHAKE';
  }
  const http = kind !== 'p2p';
  w.py = await TePeer.create(http ? { metadataUrl: w.metadata, name: `py-${process.pid}-${n}` } : { p2p: true });
  // Register before the other side opens the segment (upstream caches descriptors forever).
  w.pyMain = await w.py.alloc(PY_MAIN);
  w.pyReg = await w.py.register(PY_REG);
  w.node = await TransferEngine.create({
    metadataServer: w.metadata,
    ...(http ? { localServerName: `node-${process.pid}-${n}` } : {}),
    bindAddress: '127.0.0.1',
    advertiseAddress: '127.0.0.1',
  });
  w.nodeMain = await w.node.registerMemory(Buffer.alloc(NODE_MAIN));
  w.nodeManaged = await w.node.allocateManagedBuffer(NODE_MANAGED);
  w.seg = await w.node.openSegment(w.py.segment);
  return w as World;
}

async function destroyWorld(w: Partial<World> | undefined): Promise<void> {
  if (!w) return;
  await w.py?.stop();
  await w.node?.close();
  await w.ours?.close();
  await w.theirs?.stop();
}

/** Remote address of `off` in the Python buffer `which` (checked against Node's view of the descriptor). */
function pyAddr(w: World, which: 0 | 1, off: number, len: number): bigint {
  const base = which === 0 ? w.pyMain : w.pyReg;
  const a = base + BigInt(off);
  const b = w.seg.buffers.find((x) => x.address <= a && a + BigInt(len) <= x.address + BigInt(x.length));
  if (!b) throw new Error(`0x${a.toString(16)}+${len} is not inside any buffer the Python segment published`);
  return a;
}

/** Lays `sizes` out one after another (3-byte gaps), alternating between two buffers. */
function layout(sizes: number[], start = 5): { which: 0 | 1; off: number; local: number; len: number }[] {
  const cursor = [start, start];
  let local = start;
  return sizes.map((len, i) => {
    const which = (i % 2) as 0 | 1;
    const r = { which, off: cursor[which]!, local, len };
    cursor[which]! += len + 3;
    local += len + 3;
    return r;
  });
}

/** A batch: every size of SIZES plus 96 small random-length requests. */
function batchSizes(): number[] {
  const small = Array.from({ length: 96 }, (_, i) => 1 + ((i * 2654435761) % 9000));
  return [...SIZES, ...small];
}

describe.skipIf(skipReason !== undefined).each(WORLDS)('upstream interop, $label', ({ kind }) => {
  let w: World;

  beforeAll(async () => {
    let partial: World | undefined;
    try {
      partial = await makeWorld(kind);
      w = partial;
    } catch (e) {
      await destroyWorld(partial);
      throw e;
    }
  }, 90_000);

  afterAll(async () => {
    await destroyWorld(w);
  });

  it('each side opens and parses the other side\'s descriptor (and learns its rpc port)', async () => {
    // Node's view of the upstream segment.
    expect(w.seg.protocol).toBe('tcp');
    expect(w.seg.protoVersion).toBe(2); // 0.3.13.post1 advertises tcp_proto_version 2
    expect(w.seg.ip).toBe('127.0.0.1');
    expect(w.seg.dataPort).toBeGreaterThan(0);
    expect(w.seg.rpcPort).toBe(w.py.rpcPort);
    for (const a of [w.pyMain, w.pyReg]) {
      expect(w.seg.buffers.some((b) => b.address <= a && a < b.address + BigInt(b.length))).toBe(true);
    }
    for (const b of w.seg.buffers) expect(b.name).toBe(w.py.segment);
    // Upstream's view of ours: get_first_buffer_address opens our segment and reads buffers[0].addr.
    expect(await w.py.firstBufferAddress(w.node.localServerName)).toBe(w.nodeMain.address);
    // Handshake Probe from upstream to our daemon, found through rpc_meta (HTTP) or the name (P2P).
    expect(await w.py.probe(w.node.localServerName)).toBe(0);
    if (kind === 'p2p') {
      expect(w.py.segment).toBe(`127.0.0.1:${w.py.rpcPort}`);
      expect(w.node.localServerName).toBe(`127.0.0.1:${w.node.rpcPort}`);
    } else {
      // What each engine published, read back through the store (either server).
      const store = new HttpMetadataStore(w.metadata);
      try {
        expect(JSON.parse((await store.get(rpcMetaKey(w.py.segment)))!)).toEqual({ ip_or_host_name: '127.0.0.1', rpc_port: w.py.rpcPort });
        expect(JSON.parse((await store.get(rpcMetaKey(w.node.localServerName)))!)).toEqual({ ip_or_host_name: '127.0.0.1', rpc_port: w.node.rpcPort });
        const pyDesc = JSON.parse((await store.get(segmentKey(w.py.segment)))!) as Record<string, unknown>;
        expect(pyDesc).toMatchObject({ name: w.py.segment, protocol: 'tcp', tcp_proto_version: 2, tcp_data_port: w.seg.dataPort });
        // Ours, as stored, is what describe() says (but for the timestamp, renewed on every encode).
        const stored = JSON.parse((await store.get(segmentKey(w.node.localServerName)))!) as Record<string, unknown>;
        const live = JSON.parse(w.node.describe()) as Record<string, unknown>;
        expect(typeof stored.timestamp).toBe('string');
        delete stored.timestamp;
        delete live.timestamp;
        expect(stored).toEqual(live);
      } finally {
        await store.close();
      }
    }
  });

  it('Node → upstream: write then read back, 1 B … 16 MiB, one request each (verified in Python)', async () => {
    for (const n of SIZES) {
      const remote = pyAddr(w, 0, R_OFF, n);
      // write: Node's random bytes, hashed by Python
      const local = w.nodeMain.buffer!.subarray(L_OFF, L_OFF + n);
      randomFillSync(local);
      const r = await w.node.write(w.seg, [{ local: w.nodeMain, localOffset: L_OFF, remote, length: n }]);
      expect(r).toEqual({ bytes: n, requests: 1 });
      expect(await w.py.sha256(remote, n), `write ${sizeLabel(n)}`).toBe(sha(local));
      // read back what we wrote, into a different place
      const back = w.nodeMain.buffer!.subarray(NODE_MAIN - n - 1, NODE_MAIN - 1);
      back.fill(0);
      await w.node.read(w.seg, [{ local: w.nodeMain, localOffset: NODE_MAIN - n - 1, remote, length: n }]);
      expect(back.equals(local), `read back ${sizeLabel(n)}`).toBe(true);
      // read: fresh random bytes written by Python
      const expected = await w.py.fill(remote, n);
      await w.node.read(w.seg, [{ local: w.nodeManaged, localOffset: 1, remote, length: n }]);
      expect(sha(w.nodeManaged.buffer!.subarray(1, 1 + n)), `read ${sizeLabel(n)}`).toBe(expected);
    }
  });

  it('Node → upstream: batched write and read of 102 requests over both upstream buffers', async () => {
    const plan = layout(batchSizes());
    const buf = w.nodeMain.buffer!;
    randomFillSync(buf, 0, plan.at(-1)!.local + plan.at(-1)!.len);
    const reqs = plan.map((p) => ({ local: w.nodeMain, localOffset: p.local, remote: pyAddr(w, p.which, p.off, p.len), length: p.len }));
    const total = plan.reduce((s, p) => s + p.len, 0);
    expect(await w.node.write(w.seg, reqs)).toEqual({ bytes: total, requests: plan.length });
    const theirs = await w.py.sha256Many(reqs.map((q) => [q.remote, q.length]));
    expect(theirs).toEqual(plan.map((p) => sha(buf.subarray(p.local, p.local + p.len))));

    // Upstream rewrites every range; a prepared batch reads them all back.
    const expected = await w.py.fillMany(reqs.map((q) => [q.remote, q.length]));
    buf.fill(0, 0, plan.at(-1)!.local + plan.at(-1)!.len);
    const prepared = w.node.prepareBatch(w.seg, 'read', reqs);
    expect(await w.node.submitPrepared(prepared)).toEqual({ bytes: total, requests: plan.length });
    expect(plan.map((p) => sha(buf.subarray(p.local, p.local + p.len)))).toEqual(expected);
  });

  it('upstream → Node: transfer_sync write then read, 1 B … 16 MiB (verified in Node)', async () => {
    const target = w.node.localServerName;
    for (const n of SIZES) {
      // write: Python's random bytes land in our JS Buffer
      const src = w.pyMain + 11n;
      const expected = await w.py.fill(src, n);
      const dst = w.nodeMain.address + BigInt(R_OFF);
      expect(await w.py.transfer(target, 'write', src, dst, n), `write ${sizeLabel(n)}`).toBe(0);
      expect(sha(w.nodeMain.buffer!.subarray(R_OFF, R_OFF + n)), `write ${sizeLabel(n)}`).toBe(expected);
      // read: our random bytes (engine-allocated memory), hashed by Python after it read them
      const mine = w.nodeManaged.buffer!.subarray(L_OFF, L_OFF + n);
      randomFillSync(mine);
      const into = w.pyReg + 3n;
      expect(await w.py.transfer(target, 'read', into, w.nodeManaged.address + BigInt(L_OFF), n), `read ${sizeLabel(n)}`).toBe(0);
      expect(await w.py.sha256(into, n), `read ${sizeLabel(n)}`).toBe(sha(mine));
    }
  });

  it('upstream → Node: batch_transfer_sync write and read of 102 requests over both Node regions', async () => {
    const target = w.node.localServerName;
    const plan = layout(batchSizes(), 9);
    const regions = [w.nodeMain, w.nodeManaged];
    const pyLocal = (p: (typeof plan)[number]) => w.pyMain + BigInt(p.local);
    const nodeRemote = (p: (typeof plan)[number]) => regions[p.which]!.address + BigInt(p.off);
    const nodeBytes = (p: (typeof plan)[number]) => regions[p.which]!.buffer!.subarray(p.off, p.off + p.len);

    const expected = await w.py.fillMany(plan.map((p) => [pyLocal(p), p.len]));
    const reqs = plan.map((p) => ({ local: pyLocal(p), remote: nodeRemote(p), length: p.len }));
    expect(await w.py.batch(target, 'write', reqs)).toBe(0);
    expect(plan.map((p) => sha(nodeBytes(p)))).toEqual(expected);

    for (const p of plan) randomFillSync(nodeBytes(p));
    expect(await w.py.batch(target, 'read', reqs.map((q) => ({ ...q, local: q.local + BigInt(PY_MAIN / 2) })))).toBe(0);
    const theirs = await w.py.sha256Many(plan.map((p) => [pyLocal(p) + BigInt(PY_MAIN / 2), p.len]));
    expect(theirs).toEqual(plan.map((p) => sha(nodeBytes(p))));
  });

  it('both directions at once: upstream batch-writes Node while Node writes and reads upstream concurrently', async () => {
    const target = w.node.localServerName;
    // Upstream → Node: 64 × 128 KiB into nodeManaged. Node → upstream: 8 concurrent 1 MiB writes into
    // pyReg and 8 reads from pyMain's second half. Disjoint ranges, all checked afterwards.
    const up = Array.from({ length: 64 }, (_, i) => ({ local: w.pyMain + BigInt(i * 131_072), remote: w.nodeManaged.address + BigInt(i * 131_072), length: 131_072 }));
    const upSha = await w.py.fillMany(up.map((q) => [q.local, q.length]));
    const readBase = w.pyMain + BigInt(PY_MAIN / 2);
    const readSha = await w.py.fillMany(Array.from({ length: 8 }, (_, i) => [readBase + BigInt(i * MiB), MiB] as [bigint, number]));
    randomFillSync(w.nodeMain.buffer!, 0, 8 * MiB);
    const pending = w.py.batch(target, 'write', up);
    const nodeSide = Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        await w.node.write(w.seg, [{ local: w.nodeMain, localOffset: i * MiB, remote: pyAddr(w, 1, i * MiB, MiB), length: MiB }]);
        await w.node.read(w.seg, [{ local: w.nodeMain, localOffset: 16 * MiB + i * MiB, remote: readBase + BigInt(i * MiB), length: MiB }]);
      }),
    );
    const [ret] = await Promise.all([pending, nodeSide]);
    expect(ret).toBe(0);
    expect(up.map((_, i) => sha(w.nodeManaged.buffer!.subarray(i * 131_072, (i + 1) * 131_072)))).toEqual(upSha);
    const wrote = Array.from({ length: 8 }, (_, i) => sha(w.nodeMain.buffer!.subarray(i * MiB, (i + 1) * MiB)));
    expect(await w.py.sha256Many(Array.from({ length: 8 }, (_, i) => [w.pyReg + BigInt(i * MiB), MiB] as [bigint, number]))).toEqual(wrote);
    expect(Array.from({ length: 8 }, (_, i) => sha(w.nodeMain.buffer!.subarray(16 * MiB + i * MiB, 17 * MiB + i * MiB)))).toEqual(readSha);
  });

  it('memory registered after the other side opened the segment: Node refreshes the upstream descriptor; upstream needs no refresh', async () => {
    // Upstream registers more memory; Node's cached descriptor does not list it yet.
    const late = await w.py.register(MiB);
    expect(w.seg.buffers.some((b) => b.address <= late && late < b.address + BigInt(b.length))).toBe(false);
    const data = randomFillSync(Buffer.alloc(MiB));
    w.nodeMain.buffer!.set(data, 0);
    await w.node.write(w.seg, [{ local: w.nodeMain, remote: late, length: MiB }]); // INVALID_REMOTE_ADDRESS -> refresh -> retry
    expect(await w.py.sha256(late, MiB)).toBe(sha(data));
    expect(w.seg.buffers.some((b) => b.address === late && b.length === MiB)).toBe(true);

    // Node registers more memory; upstream caches our descriptor but does not check remote addresses
    // against it: our server checks them against what is registered now.
    const lateNode = await w.node.registerMemory(Buffer.alloc(MiB));
    const expected = await w.py.fill(w.pyMain, MiB);
    expect(await w.py.transfer(w.node.localServerName, 'write', w.pyMain, lateNode.address, MiB)).toBe(0);
    expect(sha(lateNode.buffer!)).toBe(expected);
    await w.node.unregisterMemory(lateNode);
    expect(await w.py.transfer(w.node.localServerName, 'read', w.pyMain, lateNode.address, MiB)).toBe(-1);
  });

  it('notifications: Node sendNotify → upstream get_notifies()', async () => {
    await w.py.notifies(); // start empty
    await w.node.sendNotify(w.py.segment, { name: 'req-42', msg: 'kv blocks 0..7 ready' });
    await w.node.sendNotify(w.seg, { name: 'n\u00e9\u{1F600}', msg: 'line\nbreak "quoted" \\ tab\t' });
    expect(await w.py.waitNotifies(2)).toEqual([
      { name: 'req-42', msg: 'kv blocks 0..7 ready' },
      { name: 'n\u00e9\u{1F600}', msg: 'line\nbreak "quoted" \\ tab\t' },
    ]);
  });

  it("notifications: upstream transfer_sync / batch_transfer_sync(..., notify) → Node 'notify' event, iterator and getNotifies()", async () => {
    const target = w.node.localServerName;
    w.node.getNotifies(); // start empty
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error('no notify within 15 s')), 15_000);
    try {
      const iterator = w.node.notifies({ signal: ac.signal });
      const event = once(w.node, 'notify', { signal: ac.signal });
      const first = iterator.next();
      const payload = Buffer.from('bytes before the notify');
      await w.py.writeBytes(w.pyMain, payload);
      const ret = await w.py.transfer(target, 'write', w.pyMain, w.nodeMain.address, payload.length, { name: 'req-\u00e9', msg: 'layer 3 written' });
      expect(ret).toBe(0);
      expect((await first).value).toEqual({ name: 'req-\u00e9', msg: 'layer 3 written' });
      expect((await event)[0]).toEqual({ name: 'req-\u00e9', msg: 'layer 3 written' });
      // the notify follows the data: the bytes are there when it arrives
      expect(w.nodeMain.buffer!.subarray(0, payload.length).equals(payload)).toBe(true);
      await iterator.return!();

      // With no iterator waiting, notifies queue for getNotifies() (upstream's getNotifies).
      const reqs = [0, 1, 2].map((i) => ({ local: w.pyMain + BigInt(i * 4096), remote: w.nodeManaged.address + BigInt(i * 4096), length: 4096 }));
      expect(await w.py.batch(target, 'read', reqs, { name: 'batch', msg: 'three pages read' })).toBe(0);
      const got: { name: string; msg: string }[] = [];
      const deadline = Date.now() + 10_000;
      while (got.length === 0 && Date.now() < deadline) {
        got.push(...w.node.getNotifies());
        if (got.length === 0) await new Promise((r) => setTimeout(r, 20));
      }
      expect(got).toEqual([{ name: 'batch', msg: 'three pages read' }]);
    } finally {
      clearTimeout(timer);
    }
  });
});

describe.skipIf(skipReason !== undefined)('upstream interop: metadata entries after both peers leave', () => {
  it('upstream on our MetadataServer and Node on upstream\'s server both delete what they published', async () => {
    const ours = new MetadataServer({ logger: null });
    const oursUrl = (await ours.listen(0, '127.0.0.1')).url;
    const theirs = await spawnUpstreamMetadataServer();
    const store = new HttpMetadataStore(theirs.url);
    try {
      const py = await TePeer.create({ metadataUrl: oursUrl, name: `py-leave-${process.pid}` });
      await py.alloc(MiB);
      const node = await TransferEngine.create({ metadataServer: theirs.url, localServerName: `node-leave-${process.pid}`, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
      await node.registerMemory(Buffer.alloc(MiB));
      expect([...ours.entries().keys()].sort()).toEqual([rpcMetaKey(py.segment), segmentKey(py.segment)].sort());
      expect(await store.get(rpcMetaKey(node.localServerName))).toBe(JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: node.rpcPort }));
      expect(await store.get(segmentKey(node.localServerName))).toBeDefined();
      await py.stop();
      await node.close();
      expect([...ours.entries().keys()]).toEqual([]);
      expect(await store.get(rpcMetaKey(node.localServerName))).toBeUndefined();
      expect(await store.get(segmentKey(node.localServerName))).toBeUndefined();
    } finally {
      await store.close();
      await ours.close();
      await theirs.stop();
    }
  });
});

describe.skipIf(skipReason !== undefined)('upstream interop: a peer process that dies', () => {
  afterAll(async () => {
    await stopAllTePeers();
  });

  it('upstream target killed while Node transfers: they fail by code, no hang; the engine keeps working', async () => {
    const node = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const region = await node.registerMemory(Buffer.alloc(16 * MiB));
      const victim = await TePeer.create({ p2p: true });
      const vBuf = await victim.alloc(16 * MiB);
      const seg = await node.openSegment(victim.segment);
      await node.read(seg, [{ local: region, remote: vBuf, length: 16 * MiB }]);
      // Keep 4 reads of 16 MiB in flight, SIGKILL the peer, and see every one settle.
      let stop = false;
      const codes: string[] = [];
      const loops = Array.from({ length: 4 }, async () => {
        while (!stop) {
          try {
            await node.read(seg, [{ local: region, remote: vBuf, length: 16 * MiB }], { timeoutMs: 20_000 });
          } catch (e) {
            codes.push((e as { code: string }).code);
            return;
          }
        }
      });
      await new Promise((r) => setTimeout(r, 200));
      victim.kill();
      await victim.exit;
      const settled = Promise.all(loops);
      const t = setTimeout(() => (stop = true), 15_000); // only if something never failed
      await settled;
      clearTimeout(t);
      expect(codes.length).toBe(4);
      for (const c of codes) expect(['CONNECTION_LOST', 'CONNECT_FAILED']).toContain(c);
      // A new transfer to the dead peer fails fast, by code.
      const e = await node.read(seg, [{ local: region, remote: vBuf, length: 4096 }], { timeoutMs: 20_000 }).catch((x: unknown) => x);
      expect(['CONNECTION_LOST', 'CONNECT_FAILED']).toContain((e as { code: string }).code);
      // The engine is fine: another upstream peer, both directions.
      const next = await TePeer.create({ p2p: true });
      const nBuf = await next.alloc(MiB);
      const seg2 = await node.openSegment(next.segment);
      randomFillSync(region.buffer!, 0, MiB);
      await node.write(seg2, [{ local: region, remote: nBuf, length: MiB }]);
      expect(await next.sha256(nBuf, MiB)).toBe(sha(region.buffer!.subarray(0, MiB)));
      const expected = await next.fill(nBuf, MiB);
      expect(await next.transfer(node.localServerName, 'write', nBuf, region.address + BigInt(MiB), MiB)).toBe(0);
      expect(sha(region.buffer!.subarray(MiB, 2 * MiB))).toBe(expected);
      console.info(`[transfer-upstream] codes of the reads in flight when the upstream target died: ${codes.join(', ')}`);
    } finally {
      await stopAllTePeers();
      await node.close();
    }
  });

  it('upstream initiator killed in the middle of a batch write: Node drops its connections and keeps serving', async () => {
    const node = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const region = await node.registerMemory(Buffer.alloc(64 * MiB));
      const victim = await TePeer.create({ p2p: true });
      const src = await victim.alloc(64 * MiB);
      const reqs = Array.from({ length: 64 }, (_, i) => ({ local: src + BigInt(i * MiB), remote: region.address + BigInt(i * MiB), length: MiB }));
      // Warm up (segment opened, connections made), then kill it while a 64 MiB batch is under way.
      expect(await victim.batch(node.localServerName, 'write', reqs.slice(0, 2))).toBe(0);
      void victim.batch(node.localServerName, 'write', reqs).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 30));
      victim.kill();
      await victim.exit;
      // Node's server connections from the dead process go away (bounded wait).
      const deadline = Date.now() + 10_000;
      while (node.stats().serverConnections! > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(node.stats().serverConnections).toBe(0);
      const next = await TePeer.create({ p2p: true });
      const nBuf = await next.alloc(4 * MiB);
      const expected = await next.fill(nBuf, 4 * MiB);
      expect(await next.transfer(node.localServerName, 'write', nBuf, region.address + 5n, 4 * MiB)).toBe(0);
      expect(sha(region.buffer!.subarray(5, 5 + 4 * MiB))).toBe(expected);
    } finally {
      await stopAllTePeers();
      await node.close();
    }
  });
});
