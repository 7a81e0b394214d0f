/**
 * Both TCP framings against the real upstream engine (0.3.13.post1), and what our
 * target does with upstream requests outside its registered memory.
 *
 * Which framing an initiator really used is read off the wire: a WireTap (test/interop/peers/wire-tap.ts)
 * sits in front of the target's data port and decodes every request header (opcode 0/1 = v1,
 * 0x80/0x81 = v2). To route a peer through it, the test publishes an *alias* of the target on our
 * MetadataServer: the target's own descriptor with `tcp_data_port` pointing at the tap (and, for
 * "a peer that does not advertise v2", without `tcp_proto_version`), plus an rpc_meta entry.
 *
 * A v1 WRITE is complete for its initiator once the bytes are handed to the kernel (no ack), so the
 * receiving side's bytes are polled, bounded, instead of being checked at once.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine } from '../../lib/engine';
import type { MemoryRegion } from '../../lib/engine/memory';
import { HttpMetadataStore, MetadataServer, rpcMetaKey, segmentKey } from '../../lib/metadata';
import { SETUP_COMMAND, UPSTREAM_VERSION, upstreamPeer } from '../helpers/upstream';
import { TePeer, stopAllTePeers } from './peers/te-peer';
import { WireTap } from './peers/wire-tap';

const up = upstreamPeer();
const skipReason = 'skipReason' in up ? up.skipReason : undefined;
if (skipReason) {
  console.warn(
    `\n[framing-upstream] SKIPPING the upstream TCP framing interop suite: ${skipReason}\n` +
      `[framing-upstream] Install the upstream peer (mooncake-transfer-engine-non-cuda ${UPSTREAM_VERSION}) with: bash ${SETUP_COMMAND}   (or set MOONCAKE_UPSTREAM_VENV)\n`,
  );
}

const MiB = 1 << 20;
const SIZES = [1, 4096, 65_536 + 5, 4 * MiB];
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Polls `check` until it returns true (bounded); v1 writes land shortly after the initiator is done. */
async function eventually(check: () => Promise<boolean> | boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(skipReason !== undefined)('TCP framings v1 and v2 with upstream (observed on the wire)', () => {
  let meta: MetadataServer;
  let url: string;
  let store: HttpMetadataStore;
  const taps: WireTap[] = [];
  const engines: TransferEngine[] = [];
  let py: TePeer;
  let pyBuf: bigint;
  let pyDesc: Record<string, unknown>;
  let aliasCount = 0;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
    store = new HttpMetadataStore(url);
    py = await TePeer.create({ metadataUrl: url, name: `py-framing-${process.pid}` });
    pyBuf = await py.alloc(8 * MiB);
    pyDesc = JSON.parse((await store.get(segmentKey(py.segment)))!) as Record<string, unknown>;
    expect(pyDesc.tcp_proto_version).toBe(2);
  }, 60_000);

  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.close()));
    await Promise.all(taps.splice(0).map((t) => t.close()));
  });

  afterAll(async () => {
    await stopAllTePeers();
    await store?.close();
    await meta?.close();
  });

  async function nodeEngine(options: { tcpProtoVersion?: 1 | 2 } = {}): Promise<{ node: TransferEngine; region: MemoryRegion }> {
    const node = await TransferEngine.create({
      metadataServer: url,
      localServerName: `node-framing-${process.pid}-${engines.length}-${aliasCount}`,
      bindAddress: '127.0.0.1',
      advertiseAddress: '127.0.0.1',
      ...options,
    });
    engines.push(node);
    return { node, region: await node.registerMemory(Buffer.alloc(12 * MiB)) };
  }

  /**
   * Publishes `desc` under a new name whose data port is a WireTap in front of the real one.
   * `advertiseV2: false` drops `tcp_proto_version` (an upstream peer before v0.3.12).
   */
  async function tappedAlias(desc: Record<string, unknown>, rpcPort: number, advertiseV2: boolean): Promise<{ name: string; tap: WireTap }> {
    const tap = new WireTap({ host: '127.0.0.1', port: desc.tcp_data_port as number });
    taps.push(tap);
    await tap.listen();
    const name = `alias-${process.pid}-${++aliasCount}`;
    const alias: Record<string, unknown> = {
      ...desc,
      name,
      tcp_data_host: '127.0.0.1',
      tcp_data_port: tap.port,
      buffers: (desc.buffers as Record<string, unknown>[]).map((b) => ({ ...b, name })),
    };
    if (!advertiseV2) delete alias.tcp_proto_version;
    // Addresses are < 2^53 on x86-64 Linux, so JSON.parse/stringify keep them exact.
    await store.set(segmentKey(name), JSON.stringify(alias));
    await store.set(rpcMetaKey(name), JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: rpcPort }));
    return { name, tap };
  }

  /** Node writes then reads each size through `segmentName`; bytes checked in Python. */
  async function nodeRoundTrips(node: TransferEngine, region: MemoryRegion, segmentName: string, v1: boolean): Promise<void> {
    const seg = await node.openSegment(segmentName);
    for (const n of SIZES) {
      const remote = pyBuf + 17n;
      const local = region.buffer!.subarray(3, 3 + n);
      randomFillSync(local);
      // The destination must not already hold the bytes, or a v1 check could pass before they land.
      if ((await py.sha256(remote, n)) === sha(local)) local[0] ^= 0xff;
      await node.write(seg, [{ local: region, localOffset: 3, remote, length: n }]);
      if (v1) await eventually(async () => (await py.sha256(remote, n)) === sha(local), `v1 write of ${n} B visible in Python`);
      else expect(await py.sha256(remote, n)).toBe(sha(local));
      const expected = await py.fill(remote, n);
      await node.read(seg, [{ local: region, localOffset: 4 * MiB + 1, remote, length: n }]);
      expect(sha(region.buffer!.subarray(4 * MiB + 1, 4 * MiB + 1 + n))).toBe(expected);
    }
  }

  it('Node → upstream advertising v2: v2 on the wire', async () => {
    const { node, region } = await nodeEngine();
    const { name, tap } = await tappedAlias(pyDesc, py.rpcPort, true);
    await nodeRoundTrips(node, region, name, false);
    expect((await node.openSegment(name)).protoVersion).toBe(2);
    expect(tap.headers.length).toBeGreaterThanOrEqual(SIZES.length * 2);
    expect([...tap.framings()]).toEqual(['v2']);
    expect(new Set(tap.headers.map((h) => h.opcode))).toEqual(new Set([0x80, 0x81]));
  });

  it('Node → an upstream descriptor without tcp_proto_version: v1 on the wire', async () => {
    const { node, region } = await nodeEngine();
    const { name, tap } = await tappedAlias(pyDesc, py.rpcPort, false);
    expect((await node.openSegment(name)).protoVersion).toBe(1);
    await nodeRoundTrips(node, region, name, true);
    expect([...tap.framings()]).toEqual(['v1']);
    expect(new Set(tap.headers.map((h) => h.opcode))).toEqual(new Set([0, 1]));
  });

  it('Node with tcpProtoVersion: 1 → upstream advertising v2: v1 on the wire', async () => {
    const { node, region } = await nodeEngine({ tcpProtoVersion: 1 });
    const { name, tap } = await tappedAlias(pyDesc, py.rpcPort, true);
    await nodeRoundTrips(node, region, name, true);
    expect([...tap.framings()]).toEqual(['v1']);
    expect((await node.openSegment(name)).protoVersion).toBe(1);
  });

  it('an upstream target rejects Node requests outside what it registered: v2 REMOTE_REJECTED, v1 CONNECTION_LOST; Node carries on', async () => {
    const { node, region } = await nodeEngine();
    // The alias claims one more buffer, at an address upstream never registered.
    const FAKE = 0x10000n;
    const lying = { ...pyDesc, buffers: [...(pyDesc.buffers as Record<string, unknown>[]), { name: py.segment, addr: Number(FAKE), length: MiB }] };
    const outcomes: Record<string, string> = {};
    for (const advertiseV2 of [true, false]) {
      const { name, tap } = await tappedAlias(lying, py.rpcPort, advertiseV2);
      const seg = await node.openSegment(name);
      const v = advertiseV2 ? 'v2' : 'v1';
      for (const op of ['read', 'write'] as const) {
        const e = await node[op](seg, [{ local: region, remote: FAKE + 64n, length: 4096 }]).then(() => undefined, (x: unknown) => x);
        const code = (e as { code?: string } | undefined)?.code ?? 'OK';
        outcomes[`${v} ${op}`] = code;
        if (advertiseV2) expect(code, `${v} ${op}`).toBe('REMOTE_REJECTED');
        else if (op === 'read') expect(code, `${v} ${op}`).toBe('CONNECTION_LOST');
        // a v1 write is complete once sent: upstream's rejection (closing) may come too late to see
      }
      // A batch mixing good and bad requests: the bad one fails with its own code; the good ones either
      // complete or, when they shared the connection upstream closed, fail as collateral.
      const good = pyBuf + 4096n;
      randomFillSync(region.buffer!, 0, 8192);
      const mixed = await node
        .write(seg, [
          { local: region, localOffset: 0, remote: good, length: 4096 },
          { local: region, localOffset: 4096, remote: FAKE, length: 4096 },
        ])
        .then(() => undefined, (x: unknown) => x as { code: string; failures?: (string | undefined)[] });
      outcomes[`${v} mixed batch`] = mixed ? `${mixed.code} ${JSON.stringify(mixed.failures)}` : 'OK';
      if (advertiseV2) {
        expect(mixed?.failures?.[1]).toBe('REMOTE_REJECTED');
        expect([undefined, 'CONNECTION_LOST']).toContain(mixed?.failures?.[0]);
      }
      // Node carries on with this peer: good transfers both ways, bytes checked in Python.
      randomFillSync(region.buffer!, 0, MiB);
      await node.write(seg, [{ local: region, remote: good, length: MiB }]);
      const want = sha(region.buffer!.subarray(0, MiB));
      if (advertiseV2) expect(await py.sha256(good, MiB)).toBe(want);
      else await eventually(async () => (await py.sha256(good, MiB)) === want, 'v1 write after a rejection');
      const expected = await py.fill(good, MiB);
      await node.read(seg, [{ local: region, localOffset: MiB, remote: good, length: MiB }]);
      expect(sha(region.buffer!.subarray(MiB, 2 * MiB))).toBe(expected);
      expect([...tap.framings()]).toEqual([v]);
    }
    console.info(`[framing-upstream] Node initiator, requests upstream rejects: ${JSON.stringify(outcomes)}`);
  });

  for (const proto of ['2', '1'] as const) {
    it(`upstream initiator${proto === '1' ? ' with MC_TCP_PROTO=1' : ''} → Node target: v${proto} on the wire, bytes verified in Node`, async () => {
      const { node, region } = await nodeEngine();
      const initiator = await TePeer.create({ metadataUrl: url, name: `py-init-${proto}-${process.pid}` }, proto === '1' ? { MC_TCP_PROTO: '1' } : ({} as Record<string, string>));
      try {
        const src = await initiator.alloc(8 * MiB);
        const { name, tap } = await tappedAlias(JSON.parse(node.describe()) as Record<string, unknown>, node.rpcPort, true);
        for (const n of SIZES) {
          let expected = await initiator.fill(src, n);
          // The destination must not already hold the bytes, or a v1 check could pass before they land.
          region.buffer!.fill(0, 9, 9 + n);
          for (let i = 0; i < 8 && expected === sha(Buffer.alloc(n)); i++) expected = await initiator.fill(src, n);
          expect(await initiator.transfer(name, 'write', src, region.address + 9n, n)).toBe(0);
          const landed = () => sha(region.buffer!.subarray(9, 9 + n)) === expected;
          if (proto === '1') await eventually(landed, `v1 write of ${n} B visible in Node`);
          else expect(landed()).toBe(true);
          randomFillSync(region.buffer!, 2 * MiB, n);
          expect(await initiator.transfer(name, 'read', src, region.address + BigInt(2 * MiB), n)).toBe(0);
          expect(await initiator.sha256(src, n)).toBe(sha(region.buffer!.subarray(2 * MiB, 2 * MiB + n)));
        }
        expect([...tap.framings()]).toEqual([`v${proto}`]);
        expect(tap.headers.length).toBe(SIZES.length * 2); // one request each: upstream does not split
      } finally {
        await initiator.stop();
      }
    });
  }
});

describe.skipIf(skipReason !== undefined)('upstream requests outside Node\'s registered memory', () => {
  let meta: MetadataServer;
  let url: string;
  let store: HttpMetadataStore;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
    store = new HttpMetadataStore(url);
  });
  afterAll(async () => {
    await stopAllTePeers();
    await store?.close();
    await meta?.close();
  });

  for (const proto of ['2', '1'] as const) {
    it(`v${proto}: every one is rejected without touching memory; Node stays healthy`, async () => {
      // One JS allocation; only two adjacent slices of it are registered. The bytes around them are
      // ours to inspect: nothing outside the registered ranges may change.
      const arena = Buffer.alloc(4 * MiB, 0xa5);
      const env: Record<string, string> = proto === '1' ? { MC_TCP_PROTO: '1' } : {};
      const node = await TransferEngine.create({ metadataServer: url, localServerName: `node-reject-v${proto}-${process.pid}`, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
      const tap = new WireTap({ host: '127.0.0.1', port: node.dataPort });
      try {
        const a = await node.registerMemory(arena.subarray(MiB, 2 * MiB));
        const b = await node.registerMemory(arena.subarray(2 * MiB, 3 * MiB)); // adjacent to a
        expect(b.address).toBe(a.address + BigInt(MiB));
        const snapshot = Buffer.from(arena);
        // The bad requests go through a tap, so we know exactly which ones reached Node.
        await tap.listen();
        const alias = `node-reject-tap-v${proto}-${process.pid}`;
        const desc = JSON.parse(node.describe()) as Record<string, unknown>;
        await store.set(segmentKey(alias), JSON.stringify({ ...desc, name: alias, tcp_data_port: tap.port }));
        await store.set(rpcMetaKey(alias), JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: node.rpcPort }));

        const py = await TePeer.create({ metadataUrl: url, name: `py-reject-v${proto}-${process.pid}` }, env);
        const pyBuf = await py.alloc(4 * MiB);
        await py.fill(pyBuf, 4 * MiB);
        const before = node.stats();

        const bad: [string, bigint, number][] = [
          ['before the first region', a.address - 4096n, 16],
          ['straddling the start', a.address - 8n, 16],
          ['straddling the end', b.address + BigInt(MiB) - 8n, 16],
          ['after the last region', b.address + BigInt(MiB) + 64n, 4096],
          ['spanning two adjacent regions', a.address + BigInt(MiB) - 8n, 16],
          ['larger than the region', a.address, 2 * MiB + 1],
          ['far away', 0x10000n, 64],
        ];
        const results: Record<string, string> = {};
        for (const [label, addr, len] of bad) {
          for (const op of ['read', 'write'] as const) {
            const ret = await py.transfer(alias, op, pyBuf, addr, len);
            results[`${op} ${label}`] = String(ret);
            // A v2 initiator is told (status frame "rejected"). A v1 READ fails (the connection closes
            // instead of data); a v1 WRITE may already count as done (upstream's silent-failure defect).
            if (proto === '2' || op === 'read') expect(ret, `${op} ${label}`).toBe(-1);
          }
        }
        // A v1 WRITE "completes" before Node has read it: wait until Node closed every connection.
        await tap.targetClosedAll();
        console.info(`[framing-upstream] v${proto}: transfer_sync return codes for out-of-range requests: ${JSON.stringify(results)}; ${tap.headers.length} of ${bad.length * 2} reached Node`);
        expect(arena.equals(snapshot)).toBe(true);
        // Nothing was served; every request that reached Node was rejected. Upstream's client does not
        // send every one: after a rejection it may fail the next request on that connection lane by
        // itself. In v1, Node closing the connection is the rejection, so a header the client had
        // already sent on it may pass the tap and never be read by Node: there, at most as many.
        const after = node.stats();
        expect(after.requestsServed).toBe(before.requestsServed);
        const rejected = after.requestsRejected! - before.requestsRejected!;
        expect(rejected).toBeGreaterThanOrEqual(1);
        if (proto === '2') expect(rejected).toBe(tap.headers.length);
        else expect(rejected).toBeLessThanOrEqual(tap.headers.length);
        expect([...tap.framings()]).toEqual([`v${proto}`]);
        const registered = (addr: bigint, size: bigint) => [a, b].some((r) => r.address <= addr && addr + size <= r.address + BigInt(r.length));
        for (const h of tap.headers) expect(registered(h.addr, h.size)).toBe(false);

        // Still healthy. A fresh upstream initiator succeeds at once, both directions.
        const fresh = await TePeer.create({ metadataUrl: url, name: `py-fresh-v${proto}-${process.pid}` }, env);
        const src = await fresh.alloc(MiB);
        const expected = await fresh.fill(src, 64 * 1024);
        expect(await fresh.transfer(node.localServerName, 'write', src, a.address + 100n, 64 * 1024)).toBe(0);
        const landed = () => sha(a.buffer!.subarray(100, 100 + 64 * 1024)) === expected;
        if (proto === '1') await eventually(landed, 'v1 write after rejections');
        else expect(landed()).toBe(true);
        expect(await fresh.transfer(node.localServerName, 'read', src, b.address, 4096)).toBe(0);
        expect(await fresh.sha256(src, 4096)).toBe(sha(b.buffer!.subarray(0, 4096)));
        // The initiator that was rejected gets through too (upstream's client may need a retry after
        // its lane cool-down; against an upstream target it behaves the same).
        let attempts = 0;
        for (;;) {
          attempts++;
          if ((await py.transfer(node.localServerName, 'read', pyBuf + BigInt(MiB), b.address + 8n, 4096)) === 0) break;
          expect(attempts, 'the rejected initiator never got a good read through').toBeLessThan(5);
          await new Promise((r) => setTimeout(r, 1200));
        }
        expect(await py.sha256(pyBuf + BigInt(MiB), 4096)).toBe(sha(b.buffer!.subarray(8, 8 + 4096)));
        // And Node → upstream still works.
        const seg = await node.openSegment(py.segment);
        await node.read(seg, [{ local: b, remote: pyBuf, length: 64 * 1024 }]);
        expect(sha(b.buffer!.subarray(0, 64 * 1024))).toBe(await py.sha256(pyBuf, 64 * 1024));
        // The good requests were not rejected: every rejection is one of the tapped bad requests.
        const total = node.stats().requestsRejected! - before.requestsRejected!;
        if (proto === '2') expect(total).toBe(rejected);
        else expect(total).toBeLessThanOrEqual(tap.headers.length);
        if (attempts > 1) console.info(`[framing-upstream] v${proto}: the rejected upstream initiator needed ${attempts} attempts for its next good read`);
      } finally {
        await stopAllTePeers();
        await tap.close();
        await node.close();
      }
    });
  }
});
