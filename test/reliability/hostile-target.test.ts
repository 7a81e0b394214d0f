// The initiator against a hostile target: a fake data server that answers with wrong status frames,
// rejections, short and long READ payloads, early or bogus acknowledgements, FINs, resets and silence,
// one request at a time and in bursts. Every operation must settle with a code, an OK READ must hold
// exactly the bytes the target sent, and nothing may be written outside the requested part of the
// local region: the initiator's memory sits between canary guard zones, next to a second region that
// must stay untouched.
import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import { NodeProc, closeAll } from './helpers/node';
import { MiB, rng } from './helpers/proc';

const KiB = 1024;
const OK = Buffer.from([0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]);
const REJECT = Buffer.from([1, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]);
const REMOTE_BASE = 0x10000;

/** What the fake server does with one request (it has read the header, and a WRITE's body if `body`). */
type Act = (s: net.Socket, req: { size: number; addr: bigint; write: boolean; v2: boolean }) => void;
interface Behaviour {
  what: string;
  /** Read a WRITE's whole body before acting (false: act on the header alone). */
  body: boolean;
  act: Act;
}

/** The READ payload the fake sends for a request: deterministic from its address and size. */
function payload(addr: bigint, size: number): Buffer {
  const out = Buffer.alloc(size);
  let x = Number(addr % 0xffffffffn) ^ size;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** A data server that parses request headers (and WRITE bodies) and lets `pick` choose the answer. */
async function fakeServer(pick: (req: { size: number; write: boolean; v2: boolean }) => Behaviour): Promise<{ port: number; close: () => Promise<void>; served: Record<string, number> }> {
  const sockets = new Set<net.Socket>();
  const served: Record<string, number> = {};
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    let buf = Buffer.alloc(0);
    let pending: { size: number; addr: bigint; write: boolean; v2: boolean; need: number; b: Behaviour; acted: boolean } | undefined;
    let dead = false;
    const act = (p: NonNullable<typeof pending>): void => {
      p.acted = true;
      served[p.b.what] = (served[p.b.what] ?? 0) + 1;
      p.b.act(s, p);
      if (s.destroyed || s.writableEnded) dead = true;
    };
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (!dead) {
        if (!pending) {
          if (buf.length < 24) return;
          const size = Number(buf.readBigUInt64LE(0));
          const addr = buf.readBigUInt64LE(8);
          const op = buf[16]!;
          buf = buf.subarray(24);
          if (size > 16 * MiB) return void s.destroy(); // not from our initiator: the tests never ask this
          const req = { size, addr, write: (op & 0x7f) === 1, v2: (op & 0x80) !== 0 };
          const b = pick(req);
          pending = { ...req, need: req.write ? size : 0, b, acted: false };
          if (!b.body) act(pending); // answers on the header alone (the body is still consumed)
          if (dead) return;
        }
        const k = Math.min(pending.need, buf.length);
        buf = buf.subarray(k);
        pending.need -= k;
        if (pending.need > 0) return;
        const p = pending;
        pending = undefined;
        if (!p.acted) act(p);
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    served,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

const readAnswer = (s: net.Socket, r: { size: number; addr: bigint; v2: boolean }) => (r.v2 ? Buffer.concat([OK, payload(r.addr, r.size)]) : payload(r.addr, r.size));
const garbage = () => {
  let g: Buffer;
  do g = randomBytes(8);
  while (g.subarray(1).equals(OK.subarray(1)));
  return g;
};

/** Every hostile answer, and the codes the initiator may settle with. */
const BEHAVIOURS: (Behaviour & { ops: ('read' | 'write')[]; v: (1 | 2)[]; want: string[] })[] = [
  { what: 'exact answer', body: true, ops: ['read', 'write'], v: [1, 2], want: ['OK'], act: (s, r) => (r.write ? r.v2 && s.write(OK) : s.write(readAnswer(s, r))) },
  { what: 'READ payload too long (extra bytes after it)', body: true, ops: ['read'], v: [1, 2], want: ['OK'], act: (s, r) => s.write(Buffer.concat([readAnswer(s, r), Buffer.alloc(1 + (r.size % 4096), 0xee)])) },
  { what: 'READ payload short, then FIN', body: true, ops: ['read'], v: [1, 2], want: ['CONNECTION_LOST'], act: (s, r) => s.end(readAnswer(s, r).subarray(0, (r.v2 ? 8 : 0) + (r.size >> 1))) },
  { what: 'READ payload short, then reset', body: true, ops: ['read'], v: [1, 2], want: ['CONNECTION_LOST'], act: (s, r) => s.write(readAnswer(s, r).subarray(0, (r.v2 ? 8 : 0) + (r.size >> 1)), () => s.resetAndDestroy()) },
  { what: 'READ payload short, then silence', body: true, ops: ['read'], v: [1, 2], want: ['TIMEOUT'], act: (s, r) => s.write(readAnswer(s, r).subarray(0, (r.v2 ? 8 : 0) + (r.size >> 1))) },
  { what: 'status frame of garbage', body: true, ops: ['read', 'write'], v: [2], want: ['PROTOCOL_ERROR'], act: (s, r) => s.write(Buffer.concat([garbage(), r.write ? Buffer.alloc(0) : payload(r.addr, r.size)])) },
  { what: 'rejected, then the payload anyway', body: true, ops: ['read', 'write'], v: [2], want: ['REMOTE_REJECTED'], act: (s, r) => s.write(Buffer.concat([REJECT, r.write ? Buffer.alloc(0) : payload(r.addr, r.size)])) },
  { what: 'v1-style answer to a v2 READ (payload, no status frame)', body: true, ops: ['read'], v: [2], want: ['PROTOCOL_ERROR'], act: (s, r) => s.write(Buffer.concat([garbage(), payload(r.addr, r.size)])) },
  {
    what: 'status frame one byte at a time',
    body: true,
    ops: ['read', 'write'],
    v: [2],
    want: ['OK'],
    act: (s, r) => {
      const bytes = readAnswer(s, r).subarray(0, r.write ? 8 : undefined);
      for (let i = 0; i < 8; i++) s.write(bytes.subarray(i, i + 1));
      s.write(bytes.subarray(8));
    },
  },
  { what: 'acknowledged before the body arrived', body: false, ops: ['write'], v: [2], want: ['OK', 'PROTOCOL_ERROR'], act: (s) => s.write(OK) },
  { what: 'ack followed by unsolicited bytes', body: true, ops: ['write'], v: [2], want: ['OK'], act: (s) => s.write(Buffer.concat([OK, Buffer.alloc(100, 0xee)])) },
  { what: 'FIN right after the header', body: false, ops: ['read', 'write'], v: [1, 2], want: ['CONNECTION_LOST', 'OK'], act: (s) => s.end() },
  { what: 'reset right after the header', body: false, ops: ['read', 'write'], v: [1, 2], want: ['CONNECTION_LOST', 'OK'], act: (s) => s.resetAndDestroy() },
  { what: 'silence', body: true, ops: ['read', 'write'], v: [2], want: ['TIMEOUT'], act: () => undefined },
];

describe('the initiator against a hostile target', () => {
  let meta: MetadataServer;
  let url: string;
  let initiator: NodeProc;
  /** Offsets in arena 0: guard | L (the local region transfers use) | M (a region nothing should touch) | guard. */
  let L: { offset: number; length: number };
  let mBefore: string;

  const put = async (key: string, value: string) => {
    const r = await fetch(`${url}?key=${encodeURIComponent(key)}`, { method: 'PUT', body: value });
    expect(r.status).toBe(200);
  };
  const publish = async (name: string, port: number, v: 1 | 2) => {
    await put(`mooncake/ram/${name}`, JSON.stringify({ buffers: [{ addr: REMOTE_BASE, length: 16 * MiB, name }], name, protocol: 'tcp', tcp_data_port: port, tcp_proto_version: v }));
    await put(`mooncake/rpc_meta/${name}`, JSON.stringify({ ip_or_host_name: '127.0.0.1', rpc_port: 1 }));
  };
  const arenaBytes = async (offset: number, length: number) => Buffer.from(await initiator.call<string>('bytes', { offset, length }), 'hex');

  /** Everything written into the arena lies inside [from, to) of L; guards and M untouched. */
  const expectOnlyInside = async (what: string, ranges: [number, number][]) => {
    const diff = await initiator.call<[number, number][]>('diff', { arena: 0 });
    for (const [s, e] of diff) {
      const inside = ranges.some(([a, b]) => s >= L.offset + a && e <= L.offset + b);
      expect(inside, `${what}: arena bytes ${s}..${e} changed outside the requested local ranges ${JSON.stringify(ranges)}`).toBe(true);
    }
    const canaries = await initiator.call<{ changed: number }[]>('canaries');
    expect(canaries.every((c) => c.changed === 0), `${what}: guard bytes changed`).toBe(true);
  };

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    initiator = await NodeProc.spawn({
      metadataServer: url,
      localServerName: 'hostile-target-initiator',
      arenas: [{ guard: 64 * KiB, seed: 7, parts: [{ size: 2 * MiB }, { size: 256 * KiB }] }],
      // One connection per peer: a request's fate is the fate of its connection.
      options: { connectionsPerPeer: 1, idleTimeoutMs: 500, connectTimeoutMs: 1000 },
    });
    const parts = initiator.info.arenas[0]!.parts;
    L = { offset: parts[0]!.offset, length: parts[0]!.length };
    mBefore = createHash('sha256').update(await arenaBytes(parts[1]!.offset, parts[1]!.length)).digest('hex');
  });
  afterAll(async () => {
    const m = initiator.info.arenas[0]!.parts[1]!;
    if (initiator?.alive) expect(createHash('sha256').update(await arenaBytes(m.offset, m.length)).digest('hex'), 'the second region is untouched').toBe(mBefore);
    await closeAll([initiator]);
    await meta?.close();
  });

  it('each hostile answer, one request at a time (v1 and v2, READ and WRITE, 1 B to 1 MiB): settles with its code; an OK READ holds exactly what was sent', async () => {
    const rand = rng(0x7a12);
    let cases = 0;
    const seen: Record<string, Record<string, number>> = {};
    for (const b of BEHAVIOURS) {
      const fake = await fakeServer(() => b);
      try {
        for (const v of b.v) {
          const name = `hostile-${cases}`;
          await publish(name, fake.port, v);
          for (const op of b.ops) {
            for (const size of [1, 100, 4096, 65_536, 1 * MiB]) {
              const localOffset = Math.floor(rand() * (L.length - size));
              const remoteOffset = Math.floor(rand() * (8 * MiB));
              await initiator.call('restore', { arena: 0 });
              const t0 = Date.now();
              const code = await initiator.code('transfer', { target: name, op, requests: [{ localOffset, remoteOffset, length: size }], timeoutMs: 3000 }, 15_000);
              const label = `${b.what} (v${v} ${op} ${size} B)`;
              expect(b.want, `${label}: settled with ${code}`).toContain(code);
              expect(Date.now() - t0, `${label}: settles promptly`).toBeLessThan(5000);
              (seen[b.what] ??= {})[code] = (seen[b.what]![code] ?? 0) + 1;
              if (op === 'read' && code === 'OK') {
                const got = await arenaBytes(L.offset + localOffset, size);
                expect(got.equals(payload(BigInt(REMOTE_BASE + remoteOffset), size)), `${label}: OK but not the bytes sent`).toBe(true);
              }
              await expectOnlyInside(label, op === 'read' ? [[localOffset, localOffset + size]] : []);
              cases++;
            }
          }
          await initiator.call('closeSegment', { name });
        }
      } finally {
        await fake.close();
      }
    }
    console.log(`[hostile-target] ${cases} single requests settled: ${JSON.stringify(seen)}`);
  }, 300_000);

  it('bursts of 64 against a target that answers each request with a random hostile behaviour: all settle, nothing written outside the requests', async () => {
    const rand = rng(0xb0057);
    const codes: Record<string, number> = {};
    let total = 0;
    for (const v of [2, 1] as const) {
      const menu = BEHAVIOURS.filter((b) => b.v.includes(v));
      const fake = await fakeServer((req) => {
        const ok = menu.filter((b) => b.ops.includes(req.write ? 'write' : 'read'));
        return ok[Math.floor(rand() * ok.length)]!;
      });
      const name = `hostile-burst-v${v}`;
      try {
        await publish(name, fake.port, v);
        await initiator.call('open', { name });
        for (let round = 0; round < 4; round++) {
          await initiator.call('restore', { arena: 0 });
          const size = [4096, 16 * KiB, 32 * KiB, 1000][round]!;
          await initiator.call('burst.start', { id: `${name}-${round}`, target: name, n: 64, size, op: 'mixed', window: L.length, timeoutMs: 2000 });
          const res = await initiator.call<{ settled: number; unsettled: number; codes: Record<string, number>; maxMs: number }>('burst.wait', { id: `${name}-${round}`, withinMs: 20_000 }, 25_000);
          expect(res.unsettled, `v${v} round ${round}: every operation settles`).toBe(0);
          for (const [c, n] of Object.entries(res.codes)) codes[c] = (codes[c] ?? 0) + n;
          for (const c of Object.keys(res.codes)) expect(['OK', 'CONNECTION_LOST', 'PROTOCOL_ERROR', 'REMOTE_REJECTED', 'TIMEOUT', 'CONNECT_FAILED']).toContain(c);
          // A burst's READs go to offsets i*size (mod the window): all inside [0, 64*size).
          await expectOnlyInside(`v${v} burst ${round}`, [[0, 64 * size]]);
          total += res.settled;
        }
        await initiator.call('closeSegment', { name });
      } finally {
        await fake.close();
      }
    }
    console.log(`[hostile-target] ${total} burst operations settled: ${JSON.stringify(codes)}`);
    // And the engine still works against an honest peer afterwards.
    const honest = await fakeServer(() => BEHAVIOURS[0]!);
    try {
      await publish('honest', honest.port, 2);
      await initiator.call('restore', { arena: 0 });
      expect(await initiator.code('transfer', { target: 'honest', op: 'read', requests: [{ localOffset: 0, remoteOffset: 0, length: 65_536 }] })).toBe('OK');
      expect((await arenaBytes(L.offset, 65_536)).equals(payload(BigInt(REMOTE_BASE), 65_536))).toBe(true);
    } finally {
      await honest.close();
    }
  }, 300_000);
});
