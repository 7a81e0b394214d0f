// Network faults on a real link: two network namespaces joined by a veth pair made by this
// test, one engine per namespace. The link is slowed (tc: netem delay + rate where the kernel has
// sch_netem, else a tbf rate limit), cut (link down) and silently blackholed (netem loss 100%, else
// the far address removed) during transfers. Every pending operation settles with a code within its timeout; the far side does
// not stay pinned by connections that died without a FIN; the initiator keeps serving its other peer
// (same namespace, over loopback) with verified bytes; descriptors, threads and RSS are counted before
// and after. Needs root and iproute2 (ip, tc); skipped loudly otherwise. Namespaces and links are
// removed in afterAll, and on process exit, even on failure.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pattern } from '../helpers/peer';
import { MiB, procSample, sleep, until, type ProcSample } from './helpers/proc';
import { NodeProc, closeAll } from './helpers/node';
import { VethPair, netnsUnavailable, removeStale, sh } from './helpers/netns';

const KiB = 1024;
const why = netnsUnavailable();
if (why) console.warn(`[netns] SKIPPED the network-namespace fault tests: ${why}`);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Burst {
  settled: number;
  unsettled: number;
  codes: Record<string, number>;
  maxMs: number;
}
interface PumpSummary {
  rounds: number;
  mismatches: number;
  errors: Record<string, number>;
}

describe.skipIf(why !== undefined)(`network-namespace link faults${why ? ` (skipped: ${why})` : ''}`, () => {
  const pair = new VethPair('f');
  let a: NodeProc; // initiator, namespace A
  let c: NodeProc; // healthy peer, namespace A (loopback)
  let b: NodeProc; // far peer, namespace B, across the veth link
  let bName: string;
  let baseA: ProcSample;
  let baseB: ProcSample;
  const faults = { slowed: 0, cuts: 0, blackholes: 0, settled: 0 };
  const cleanup = () => pair.destroy();

  /** Writes a fresh pattern to B and reads it back into another place; both verified. */
  const roundTrip = async (size: number, seed: number, timeoutMs = 20_000) => {
    await a.call('fill', { offset: 4096, length: size, seed });
    await a.call('transfer', { target: bName, op: 'write', requests: [{ localOffset: 0, remoteOffset: 0, length: size }], timeoutMs });
    expect(await b.call('digest', { offset: 4096, length: size })).toBe(sha(pattern(seed, size)));
    await a.call('transfer', { target: bName, op: 'read', requests: [{ localOffset: 4 * MiB, remoteOffset: 0, length: size }], timeoutMs });
    expect(await a.call('digest', { offset: 4096 + 4 * MiB, length: size })).toBe(sha(pattern(seed, size)));
  };

  beforeAll(async () => {
    removeStale();
    process.once('exit', cleanup);
    pair.create();
    b = await NodeProc.spawn({ metadataServer: 'P2PHANDSHAKE', bindAddress: pair.ipB, memory: 16 * MiB, options: { idleTimeoutMs: 1500 } }, { prefix: pair.exec(pair.nsB) });
    c = await NodeProc.spawn({ metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', memory: 4 * MiB }, { prefix: pair.exec(pair.nsA) });
    a = await NodeProc.spawn(
      { metadataServer: 'P2PHANDSHAKE', bindAddress: pair.ipA, memory: 16 * MiB, options: { idleTimeoutMs: 4000, connectTimeoutMs: 1000 } },
      { prefix: pair.exec(pair.nsA) },
    );
    bName = `${pair.ipB}:${b.info.rpcPort}`;
    await a.call('open', { name: bName });
    await a.call('pump.start', { id: 'c', target: `127.0.0.1:${c.info.rpcPort}`, maxSize: 128 * KiB, localOffset: 12 * MiB, timeoutMs: 10_000, pauseMs: 2 });
    await roundTrip(1 * MiB, 1);
    baseA = await a.sample();
    baseB = await b.sample();
  });

  afterAll(async () => {
    await closeAll([a, c, b]);
    pair.destroy();
    process.removeListener('exit', cleanup);
    const left = pair.leftovers();
    if (left.length) console.error(`[netns] namespaces left behind: ${left.join(', ')}`);
    expect(left).toEqual([]);
    expect(sh(['ip', 'link', 'show']).includes('mcv-')).toBe(false);
    console.log(`[netns] faults survived: ${JSON.stringify(faults)}`);
  });

  it('slowed link (tc): transfers complete, bytes verified, and the shaping was really there', async () => {
    const applied = pair.slow('10mbit', '50ms');
    console.log(`[netns] slowed with: ${applied}`);
    faults.slowed++;
    try {
      const t0 = Date.now();
      await roundTrip(1 * MiB, 2);
      const secs = (Date.now() - t0) / 1000;
      const mbit = (2 * 8 * MiB) / 1e6 / secs;
      console.log(`[netns] 1 MiB write + read over the slowed link: ${secs.toFixed(2)} s (${mbit.toFixed(1)} Mbit/s)`);
      expect(mbit, 'the link was shaped to about 10 Mbit/s').toBeLessThan(40);
      await a.call('burst.start', { id: 'slow', target: bName, n: 8, size: 512 * KiB, op: 'mixed', window: 8 * MiB, timeoutMs: 30_000 });
      const r = await a.call<Burst>('burst.wait', { id: 'slow', withinMs: 40_000 }, 45_000);
      expect(r.unsettled).toBe(0);
      expect(r.codes).toEqual({ OK: 8 });
      faults.settled += 8;
    } finally {
      pair.unshape();
    }
  });

  it('link cut during transfers: everything settles with a code within its timeout, the far side is not left pinned, the other peer never notices', async () => {
    const bBefore = await b.stats();
    pair.slow('10mbit', '5ms'); // keep the transfers on the wire long enough to be cut mid-flight
    await a.call('burst.start', { id: 'cut', target: bName, n: 16, size: 1 * MiB, op: 'write', window: 8 * MiB, timeoutMs: 8000 });
    await sleep(600);
    pair.cut();
    faults.cuts++;
    try {
      const r = await a.call<Burst>('burst.wait', { id: 'cut', withinMs: 20_000 }, 25_000);
      console.log(`[netns] link cut mid-burst: ${JSON.stringify(r)}`);
      expect(r.unsettled, 'every transfer settled').toBe(0);
      for (const code of Object.keys(r.codes)) expect(['OK', 'TIMEOUT', 'CONNECTION_LOST', 'CONNECT_FAILED']).toContain(code);
      expect(r.codes.OK ?? 0, 'the cut caught transfers in flight').toBeLessThan(16);
      expect(r.maxMs, 'settled within timeoutMs plus slack').toBeLessThan(8000 + 4000);
      faults.settled += r.settled;
      // While cut: a new transfer fails fast with a code (connect fails or times out).
      const t0 = Date.now();
      const code = await a.code('transfer', { target: bName, op: 'read', requests: [{ localOffset: 0, remoteOffset: 0, length: 4096 }], timeoutMs: 3000 });
      expect(['CONNECT_FAILED', 'TIMEOUT', 'CONNECTION_LOST']).toContain(code);
      expect(Date.now() - t0).toBeLessThan(8000);
      faults.settled++;
      // B never saw a FIN: it closes the connections stalled mid-WRITE after its idleTimeoutMs (1.5 s),
      // so its region can be unregistered again (before the fix: REGION_BUSY forever).
      const freed = await until(async () => (await b.code('unregisterPart', { part: 0 })) === 'OK', 10_000, 100);
      expect(freed, "B's region was left pinned by the dead connections").toBeTruthy();
      expect(await b.code('registerPart', { part: 0 })).toBe('OK');
      const bAfter = await b.stats();
      expect(bAfter.serverConnectionsTimedOut! - bBefore.serverConnectionsTimedOut!).toBeGreaterThanOrEqual(1);
    } finally {
      pair.unshape();
      pair.restore();
    }
    // Back up: the same segment works again, bytes verified.
    const back = await until(async () => (await a.code('transfer', { target: bName, op: 'read', requests: [{ localOffset: 0, remoteOffset: 0, length: 4096 }], timeoutMs: 2000 })) === 'OK', 15_000, 200);
    expect(back, 'transfers resume after the link is restored').toBeTruthy();
    await roundTrip(2 * MiB, 3);
    const pump = await a.call<PumpSummary>('pump.peek', { id: 'c' });
    expect(pump.errors, 'the peer on the other link kept working').toEqual({});
    expect(pump.mismatches).toBe(0);
  });

  it('silent blackhole (packets dropped, no carrier change): the same', async () => {
    let how: string;
    pair.slow('10mbit', '5ms'); // keep the transfers on the wire long enough to be caught
    await a.call('burst.start', { id: 'bh', target: bName, n: 16, size: 1 * MiB, op: 'mixed', window: 8 * MiB, timeoutMs: 8000 });
    await sleep(600);
    if (pair.blackhole()) {
      how = 'netem loss 100%';
    } else {
      // No sch_netem: take B's address away; packets still arrive but nobody accepts them.
      sh(['ip', '-n', pair.nsB, 'addr', 'del', `${pair.ipB}/24`, 'dev', pair.devB]);
      how = "B's address removed (no sch_netem in this kernel)";
    }
    faults.blackholes++;
    console.log(`[netns] blackhole with: ${how}`);
    try {
      const r = await a.call<Burst>('burst.wait', { id: 'bh', withinMs: 20_000 }, 25_000);
      console.log(`[netns] blackhole mid-burst: ${JSON.stringify(r)}`);
      expect(r.unsettled).toBe(0);
      for (const code of Object.keys(r.codes)) expect(['OK', 'TIMEOUT', 'CONNECTION_LOST', 'CONNECT_FAILED']).toContain(code);
      expect(r.codes.OK ?? 0, 'the blackhole caught transfers in flight').toBeLessThan(16);
      expect(r.maxMs).toBeLessThan(8000 + 4000);
      faults.settled += r.settled;
    } finally {
      pair.unshape();
      sh(['ip', '-n', pair.nsB, 'addr', 'add', `${pair.ipB}/24`, 'dev', pair.devB], { ignoreErrors: true });
    }
    const back = await until(async () => (await a.code('transfer', { target: bName, op: 'read', requests: [{ localOffset: 0, remoteOffset: 0, length: 4096 }], timeoutMs: 2000 })) === 'OK', 15_000, 200);
    expect(back).toBeTruthy();
    await roundTrip(1 * MiB, 4);
  });

  it('link cut while idle: both sides find the dead connections (TCP keepalive after idleTimeoutMs), and the first transfer after the link returns succeeds', async () => {
    await roundTrip(64 * KiB, 5); // connections A -> B are open and idle now
    const bConns = (await b.stats()).serverConnections!;
    const aConns = (await a.stats()).clientConnections!;
    expect(bConns).toBeGreaterThanOrEqual(1);
    pair.cut();
    faults.cuts++;
    try {
      // Nobody sends a FIN or a RST. B (idleTimeoutMs 1.5 s) and A (4 s) probe, get no answer, close.
      const bClean = await until(async () => (await b.stats()).serverConnections === 0, 25_000, 250);
      if (!bClean) console.error(`[netns] B's sockets:\n${sh(['ip', 'netns', 'exec', pair.nsB, 'ss', '-tnoi'], { ignoreErrors: true })}`);
      expect(bClean, `B still holds ${(await b.stats()).serverConnections} connections of a peer that is gone`).toBeTruthy();
      const aClean = await until(async () => (await a.stats()).clientConnections! <= aConns - bConns, 25_000, 250);
      expect(aClean, "A still holds its idle connections to a peer that is gone").toBeTruthy();
    } finally {
      pair.restore();
    }
    // A fresh connection, not a stale one that would fail the first request with CONNECTION_LOST.
    await sleep(200);
    expect(await a.code('transfer', { target: bName, op: 'read', requests: [{ localOffset: 0, remoteOffset: 0, length: 4096 }], timeoutMs: 5000 })).toBe('OK');
    faults.settled++;
  });

  it('no descriptor, thread or memory leak on either side after the faults; the other peer was served throughout', async () => {
    expect(await until(async () => (await b.code('unregisterPart', { part: 0 })) === 'OK', 10_000, 100)).toBeTruthy();
    expect(await b.code('registerPart', { part: 0 })).toBe('OK');
    const pump = await a.call<PumpSummary & { bytes: number }>('pump.stop', { id: 'c' });
    console.log(`[netns] healthy peer during the link faults: ${JSON.stringify(pump)}`);
    expect(pump.errors).toEqual({});
    expect(pump.mismatches).toBe(0);
    expect(pump.rounds).toBeGreaterThan(50);
    const nowA = await a.sample();
    await until(async () => (await b.stats()).serverConnections! <= 2, 10_000);
    const nowB = await b.sample();
    for (const [name, base, now] of [['A (initiator)', baseA, nowA], ['B (far peer)', baseB, nowB]] as const) {
      console.log(`[netns] ${name}: fds ${base.fds} -> ${now.fds}, threads ${base.threads} -> ${now.threads}, rss ${(base.rss / MiB).toFixed(1)} -> ${(now.rss / MiB).toFixed(1)} MiB`);
      expect(now.fds, `${name} descriptors`).toBeLessThanOrEqual(base.fds + 2);
      expect(now.threads, `${name} threads`).toBeLessThanOrEqual(base.threads + 1);
      expect(now.rss - base.rss, `${name} RSS`).toBeLessThan(48 * MiB);
    }
    expect(procSample(c.pid).fds).toBeGreaterThan(0);
  });
});
