/**
 * Our handshake daemon and client against a real upstream Mooncake engine (PyPI
 * mooncake-transfer-engine-non-cuda 0.3.13.post1), driven through test/interop/peers/handshake_peer.py.
 *
 * How the Python API sends a notify: only `transfer_sync(..., notify=TransferNotify(name, msg))`
 * (and `batch_transfer_sync(..., notify=...)`): the engine queues the notify with the batch and sends
 * it over the handshake socket when it sees the batch COMPLETED. There is no standalone
 * send-notify in the Python binding, so an upstream→Node notify needs a transfer that completes.
 * Without our own data plane here, the test makes one complete with a proxy: our daemon answers the
 * upstream engine's P2P Metadata request with the descriptor of a *second* upstream engine (renamed
 * to our segment name), so the bytes go to that engine's TCP data port while the notify comes to us.
 */
import * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isMooncakeError } from '../../lib/errors';
import {
  HandshakeServer,
  HandshakeType,
  NotificationQueue,
  exchange,
  fetchPeerDescriptor,
  isJsonObject,
  probe,
  sendNotify,
  type JsonObject,
  type JsonValue,
  type RequestInfo,
} from '../../lib/handshake';
import { spawnUpstreamMetadataServer } from '../helpers/upstream';
import { handFrame, rawExchange, scriptedServer } from '../handshake/raw';
import { PythonPeer, SETUP_COMMAND, findUpstreamPython } from './peers/handshake-peer';

const found = findUpstreamPython();
const python = 'python' in found ? found.python : undefined;
const cleanups: (() => Promise<void>)[] = [];
if (!python) {
  console.warn(
    `\n[handshake-upstream] SKIPPING the upstream handshake interop suite: ${'skipReason' in found ? found.skipReason : ''}.\n` +
      `[handshake-upstream] Install the upstream peer with: bash ${SETUP_COMMAND}   (or point MOONCAKE_UPSTREAM_VENV at a venv with mooncake-transfer-engine-non-cuda)\n`,
  );
}

const peers: PythonPeer[] = [];
afterAll(() => stopAll()); // whatever a failing test left behind
const servers: HandshakeServer[] = [];

async function startPeer(): Promise<{ peer: PythonPeer; hello: Record<string, unknown> }> {
  const r = await PythonPeer.start(python!);
  peers.push(r.peer);
  return r;
}

async function startP2P(): Promise<{ peer: PythonPeer; port: number; segment: string }> {
  const { peer } = await startPeer();
  const init = await peer.call({ cmd: 'init', mode: 'p2p' });
  return { peer, port: init.rpc_port as number, segment: init.segment as string };
}

async function startOurs(options: ConstructorParameters<typeof HandshakeServer>[0] = {}): Promise<{ server: HandshakeServer; port: number; requests: RequestInfo[] }> {
  const server = new HandshakeServer(options);
  servers.push(server);
  const requests: RequestInfo[] = [];
  server.on('request', (r) => requests.push(r));
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, port, requests };
}

async function stopAll(): Promise<void> {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await Promise.all(cleanups.splice(0).map((c) => c()));
  await Promise.all(peers.splice(0).map((p) => p.stop()));
}

function expectTcpDescriptor(d: JsonValue, name: string): asserts d is JsonObject {
  expect(isJsonObject(d)).toBe(true);
  const o = d as JsonObject;
  expect(o.name).toBe(name);
  expect(o.protocol).toBe('tcp');
  expect(typeof o.tcp_data_port).toBe('number');
  expect(o.tcp_data_port as number).toBeGreaterThan(0);
  expect(o.tcp_proto_version).toBe(2);
  expect(Array.isArray(o.buffers)).toBe(true);
}

describe.skipIf(!python)('handshake interop with upstream Mooncake (P2PHANDSHAKE)', () => {
  let up: { peer: PythonPeer; port: number; segment: string };

  beforeAll(async () => {
    up = await startP2P();
  });
  afterAll(async () => {
    await up?.peer.stop();
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it('upstream send_probe reaches our daemon with the documented bytes', async () => {
    const { port, requests } = await startOurs();
    const r = await up.peer.call({ cmd: 'probe', peer: `127.0.0.1:${port}` });
    expect(r.ret).toBe(0);
    expect(requests.map((q) => [q.type, q.oldProtocol, q.text])).toEqual([[HandshakeType.Probe, false, '{}\n']]);

    // The exact request bytes, captured by a scripted server.
    let seen: Buffer | undefined;
    const s = await scriptedServer((req) => ((seen = req), handFrame(3, '{"status":"success"}\n')));
    try {
      expect((await up.peer.call({ cmd: 'probe', peer: `127.0.0.1:${s.port}` })).ret).toBe(0);
    } finally {
      await s.close();
    }
    expect(seen!.toString('hex')).toBe('0400000000000000037b7d0a');
  });

  it('upstream send_probe insists on a typed reply of the same type that parses', async () => {
    const replies: [string, Buffer | null, boolean][] = [
      ['correct', handFrame(3, '{"status":"success"}\n'), true],
      ['any JSON is enough', handFrame(3, '[]\n'), true],
      ['wrong type', handFrame(2, '{"status":"success"}\n'), false],
      ['untyped', handFrame(null, '{"status":"success"}\n'), false],
      ['not JSON', handFrame(3, '{"status"\n'), false],
      ['no reply', null, false],
    ];
    const outcome: Record<string, number> = {};
    for (const [label, reply, ok] of replies) {
      const s = await scriptedServer(() => reply);
      try {
        const r = await up.peer.call({ cmd: 'probe', peer: `127.0.0.1:${s.port}` });
        outcome[label] = r.ret as number;
        expect(r.ret === 0, label).toBe(ok);
      } finally {
        await s.close();
      }
    }
    console.info('[handshake-upstream] send_probe return codes by reply:', JSON.stringify(outcome));
  });

  it('our client probes the upstream daemon, and our replies are byte-identical to upstream replies', async () => {
    expect(await probe('127.0.0.1', up.port)).toEqual({ status: 'success' });
    const { port } = await startOurs();
    const requests: Buffer[] = [
      handFrame(3, '{}\n'),
      handFrame(2, '{"name":"cmp","notify_msg":"x"}\n'),
      handFrame(0, '{"local_nic_path":"","qp_num":[]}\n'),
      handFrame(null, '{"local_nic_path":""}\n'),
    ];
    for (const req of requests) {
      const theirs = await rawExchange(up.port, req);
      const ours = await rawExchange(port, req);
      expect(theirs.ending).toBe('end');
      expect(ours.data.toString('hex'), req.toString()).toBe(theirs.data.toString('hex'));
    }
    // Drain the comparison notify from the upstream list.
    const n = await up.peer.call({ cmd: 'notifies' });
    expect(n.notifies).toContainEqual({ name: 'cmp', msg: 'x' });
  });

  it('upstream closes without a reply on hostile input and keeps serving', async () => {
    const hostile = [Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.alloc(8, 0xff), Buffer.alloc(8), handFrame(3, '{"a":\n')];
    for (const h of hostile) {
      const r = await rawExchange(up.port, h, { halfClose: true, timeoutMs: 15_000 });
      expect(r.data.length, h.toString('hex')).toBe(0);
      expect(r.ending).not.toBe('timeout');
      expect(await probe('127.0.0.1', up.port)).toEqual({ status: 'success' });
    }
  });

  it('the 1 MiB limit counts type byte + JSON, on both sides; a type byte >= 0x80 is dropped by both', async () => {
    const { port } = await startOurs();
    const head = '{"name":"big","notify_msg":"';
    const tail = '"}\n';
    const fill = (1 << 20) - 1 - head.length - tail.length;
    const exact = handFrame(2, head + 'a'.repeat(fill) + tail);
    const over = handFrame(2, head + 'a'.repeat(fill + 1) + tail);
    expect(Number(exact.readBigUInt64LE(0))).toBe(1 << 20);
    const accepted = Buffer.concat([Buffer.from('240000000000000002', 'hex'), Buffer.from('{"name":"","notify_msg":"success"}\n')]);
    for (const p of [up.port, port]) {
      expect((await rawExchange(p, exact)).data).toEqual(accepted);
      expect((await rawExchange(p, over, { timeoutMs: 15_000 })).data.length).toBe(0);
      // x86 upstream reads the type as a signed char: 0x80 is "unexpected type"; ours: untyped, not JSON.
      expect((await rawExchange(p, handFrame(0x80, '{}\n'), { halfClose: true, timeoutMs: 15_000 })).data.length).toBe(0);
    }
    await up.peer.call({ cmd: 'notifies' });
  });

  it('known difference: jsoncpp accepts comments and trailing data after the JSON value; we refuse them', async () => {
    const { port } = await startOurs();
    for (const text of ['{} xyz\n', '/* c */{}\n']) {
      expect((await rawExchange(up.port, handFrame(3, text))).data.subarray(9).toString()).toBe('{"status":"success"}\n');
      expect((await rawExchange(port, handFrame(3, text), { halfClose: true })).data.length).toBe(0);
    }
  });

  it('an idle client stalls the upstream daemon (one connection at a time) but not ours', async () => {
    const { server, port } = await startOurs({ receiveTimeoutMs: 30_000 });
    const idleOurs = net.connect({ host: '127.0.0.1', port });
    idleOurs.on('error', () => {});
    const idleTheirs = net.connect({ host: '127.0.0.1', port: up.port });
    idleTheirs.on('error', () => {});
    try {
      await new Promise((r) => setTimeout(r, 100));
      expect(await probe('127.0.0.1', port)).toEqual({ status: 'success' });
      expect(server.stats().active).toBeGreaterThanOrEqual(1); // the idle one is still open
      const t0 = Date.now();
      expect(await probe('127.0.0.1', up.port)).toEqual({ status: 'success' });
      console.info(`[handshake-upstream] upstream probe behind an idle connection took ${Date.now() - t0} ms (its per-connection SO_RCVTIMEO is 5 s)`);
    } finally {
      idleOurs.destroy();
      idleTheirs.destroy();
    }
  });

  it('Node → upstream notify: sendNotify, then get_notifies() returns it', async () => {
    await up.peer.call({ cmd: 'notifies' }); // start empty
    await sendNotify('127.0.0.1', up.port, { name: 'req-42', msg: 'kv blocks ready' });
    await sendNotify('127.0.0.1', up.port, { name: 'n\u00e9\u{1F600}', msg: 'line\nbreak "quoted"' });
    const r = await up.peer.call({ cmd: 'notifies' });
    expect(r.notifies).toEqual([
      { name: 'req-42', msg: 'kv blocks ready' },
      { name: 'n\u00e9\u{1F600}', msg: 'line\nbreak "quoted"' },
    ]);
    expect((await up.peer.call({ cmd: 'notifies' })).notifies).toEqual([]);
  });

  it('P2P Metadata: the upstream engine answers fetchPeerDescriptor with its descriptor', async () => {
    const before = await fetchPeerDescriptor('127.0.0.1', up.port, { name: 'node-x', protocol: 'tcp', buffers: [], tcp_data_port: 1, tcp_proto_version: 2 });
    expectTcpDescriptor(before, up.segment);
    const { addr } = await up.peer.call({ cmd: 'alloc', size: 1 << 16 });
    const after = await fetchPeerDescriptor('127.0.0.1', up.port, {});
    expectTcpDescriptor(after, up.segment);
    const buffers = after.buffers as JsonObject[];
    expect(buffers.length).toBeGreaterThan(0);
    for (const b of buffers) {
      expect(b.name).toBe(up.segment);
      expect(typeof b.addr === 'number' || typeof b.addr === 'bigint').toBe(true);
      expect(Number(b.length)).toBeGreaterThan(0);
    }
    // allocate_managed_buffer hands out memory inside a registered slab.
    expect(buffers.some((b) => BigInt(b.addr as number) <= BigInt(addr as number) && BigInt(addr as number) < BigInt(b.addr as number) + BigInt(b.length as number))).toBe(true);
    console.info('[handshake-upstream] P2P descriptor from 0.3.13.post1:', JSON.stringify(after, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)));
    // The raw reply: keys sorted, compact, newline-terminated, typed Metadata.
    const raw = await exchange('127.0.0.1', up.port, HandshakeType.Metadata, {});
    expect(raw.type).toBe(HandshakeType.Metadata);
    expect(raw.text.endsWith('}\n')).toBe(true);
    expect(Object.keys(raw.value as JsonObject)).toEqual([...Object.keys(raw.value as JsonObject)].sort());
  });

  it('upstream openSegment to our daemon sends a Metadata frame we parse; our null reply fails its transfer', async () => {
    const { port, requests } = await startOurs({ onMetadata: () => null });
    const { addr } = await up.peer.call({ cmd: 'alloc', size: 4096 });
    const r = await up.peer.call({ cmd: 'transfer', target: `127.0.0.1:${port}`, addr, peer_addr: 4096, length: 16, op: 'write', notify: null });
    expect(r.ret).toBe(-1);
    const meta = requests.filter((q) => q.type === HandshakeType.Metadata);
    expect(meta.length).toBeGreaterThanOrEqual(1);
    expect(meta[0]!.oldProtocol).toBe(false);
    expect(meta[0]!.text.endsWith('\n')).toBe(true);
    const sent = JSON.parse(meta[0]!.text) as JsonValue;
    expectTcpDescriptor(sent, up.segment);
    console.info('[handshake-upstream] requests upstream sent to our daemon for a failed openSegment:', requests.map((q) => `${q.type}:${q.text.trim().slice(0, 80)}`));
  });
});

describe.skipIf(!python)('handshake interop: upstream → Node notify through a completed transfer (P2P)', () => {
  afterEach(stopAll);

  it('a notify whose name is not a string: our daemon rejects it, the upstream engine process dies', async () => {
    const victim = await startP2P();
    const { port } = await startOurs();
    const hostile = handFrame(2, '{"name":{},"notify_msg":"m"}\n');
    expect((await rawExchange(port, hostile)).data.subarray(9).toString()).toBe('{"name":"","notify_msg":""}\n');
    expect(await probe('127.0.0.1', port)).toEqual({ status: 'success' });
    const r = await rawExchange(victim.port, hostile, { timeoutMs: 15_000 });
    const exited = await Promise.race([victim.peer.exit.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), 10_000))]);
    console.info(
      `[handshake-upstream] upstream after {"name":{}} notify: reply ${r.data.length} bytes, process ${exited ? 'died' : 'survived'}` +
        (exited ? ` (${/terminate called[^\n]*\n[^\n]*/.exec(victim.peer.output)?.[0] ?? 'no message'})` : ''),
    );
    expect(r.data.length).toBe(0);
  });

  it('transfer_sync(..., notify=TransferNotify) to our segment: our daemon gets Metadata, then the Notify', async () => {
    const a = await startP2P(); // initiator
    const b = await startP2P(); // data target (stands in for our data plane)
    const { addr: bAddr } = await b.peer.call({ cmd: 'alloc', size: 4096 });
    const bDesc = await fetchPeerDescriptor('127.0.0.1', b.port, {});
    expectTcpDescriptor(bDesc, b.segment);

    const queue = new NotificationQueue();
    const { port, requests } = await startOurs({
      onNotify: (n) => queue.push(n),
      onMetadata: () => ({ ...bDesc, name: `127.0.0.1:${port}` }),
    });
    const payload = Buffer.from('mooncake-node handshake interop!');
    const { addr: aAddr } = await a.peer.call({ cmd: 'alloc', size: 4096 });
    await a.peer.call({ cmd: 'write', addr: aAddr, hex: payload.toString('hex') });

    const next = queue.next(AbortSignal.timeout(60_000));
    const r = await a.peer.call({
      cmd: 'transfer',
      target: `127.0.0.1:${port}`,
      addr: aAddr,
      peer_addr: bAddr,
      length: payload.length,
      op: 'write',
      notify: { name: 'req-\u00e9', msg: 'blocks 0..3 written' },
    });
    expect(r.ret).toBe(0);
    const n = await next;
    expect(n.value).toEqual({ name: 'req-\u00e9', msg: 'blocks 0..3 written' });
    // The bytes went to B's data port, as our descriptor said.
    expect((await b.peer.call({ cmd: 'read', addr: bAddr, length: payload.length })).hex).toBe(payload.toString('hex'));
    // What the upstream engine sent our daemon, in order.
    const kinds = requests.map((q) => q.type);
    expect(kinds[0]).toBe(HandshakeType.Metadata);
    expect(kinds).toContain(HandshakeType.Notify);
    const notifyReq = requests.find((q) => q.type === HandshakeType.Notify)!;
    expect(notifyReq.text).toBe('{"name":"req-\\u00e9","notify_msg":"blocks 0..3 written"}\n');
    expectTcpDescriptor(JSON.parse(requests[0]!.text) as JsonValue, a.segment);
    console.info('[handshake-upstream] request types upstream sent for transfer_sync+notify:', kinds.join(','));
  });
});

describe.skipIf(!python)('handshake interop with upstream Mooncake (HTTP metadata mode)', () => {
  afterEach(stopAll);

  it('probe, notify and Metadata against an upstream daemon found through rpc_meta; upstream send_probe to our daemon', async () => {
    const metadata = await spawnUpstreamMetadataServer();
    cleanups.push(() => metadata.stop());
    const url = metadata.url;
    const { peer } = await startPeer();
    const name = `up-http-${process.pid}-${Date.now()}`;
    const init = await peer.call({ cmd: 'init', mode: 'http', name, metadata_url: url });
    const rpcPort = init.rpc_port as number;

    // rpc_meta as the engine published it.
    const meta = await peer.call({ cmd: 'get_metadata', url, key: `mooncake/rpc_meta/${name}` });
    expect(meta.value).toBe(`{"ip_or_host_name":"127.0.0.1","rpc_port":${rpcPort}}`);

    expect(await probe('127.0.0.1', rpcPort)).toEqual({ status: 'success' });
    await sendNotify('127.0.0.1', rpcPort, { name: 'http-mode', msg: 'hello' });
    expect((await peer.call({ cmd: 'notifies' })).notifies).toEqual([{ name: 'http-mode', msg: 'hello' }]);

    // In HTTP mode upstream registers no Metadata callback: the reply is `null`.
    const raw = await rawExchange(rpcPort, handFrame(1, '{}\n'));
    expect(raw.data).toEqual(Buffer.concat([Buffer.from('060000000000000001', 'hex'), Buffer.from('null\n')]));
    const e = await fetchPeerDescriptor('127.0.0.1', rpcPort, {}).catch((x: unknown) => x);
    expect(isMooncakeError(e, 'METADATA')).toBe(true);

    // Upstream send_probe to a segment name resolves rpc_meta, then probes our daemon.
    const { port, requests } = await startOurs();
    const ourName = `node-seg-${process.pid}`;
    await peer.call({ cmd: 'put_metadata', url, key: `mooncake/rpc_meta/${ourName}`, value: `{"ip_or_host_name":"127.0.0.1","rpc_port":${port}}` });
    expect((await peer.call({ cmd: 'probe', peer: ourName })).ret).toBe(0);
    expect(requests.map((q) => [q.type, q.text])).toEqual([[HandshakeType.Probe, '{}\n']]);
    // An unknown name fails before any connection (rpc_meta lookup).
    expect((await peer.call({ cmd: 'probe', peer: `missing-${process.pid}` })).ret).not.toBe(0);
  });
});
