// A Node engine and a real upstream Mooncake engine (the PyPI wheel, built with etcd support) sharing
// one etcd: each finds the other through `etcd://127.0.0.1:<port>` and bytes move both ways.
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine } from '../../lib';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { skipWithoutEtcd, startEtcd, type EtcdCluster } from '../helpers/etcd';
import { pattern } from '../helpers/peer';
import { stopProcess, watchdog } from '../helpers/server-process';
import { SETUP_COMMAND, repoRoot, upstreamEnv, upstreamPeer } from '../helpers/upstream';

const found = upstreamPeer();
const noEtcd = skipWithoutEtcd('metadata-etcd-upstream');
if ('skipReason' in found) {
  console.warn(`\n[metadata-etcd-upstream] SKIPPING: ${found.skipReason}.\n[metadata-etcd-upstream] Install the upstream peer with: bash ${SETUP_COMMAND}\n`);
}
const skip = noEtcd || 'skipReason' in found;

type Answer = Record<string, unknown> & { ok: boolean; error?: string };

/** test/fixtures/metadata_upstream_peer.py in the upstream venv's Python. */
class PythonPeer {
  private readonly waiting: ((a: Answer) => void)[] = [];
  private log = '';
  private constructor(readonly child: ChildProcess) {}

  static async start(python: string): Promise<PythonPeer> {
    const child = spawn(python, [path.join(repoRoot, 'test/fixtures/metadata_upstream_peer.py')], {
      env: upstreamEnv(),
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: repoRoot,
    });
    watchdog(child);
    const peer = new PythonPeer(child);
    child.stderr!.on('data', (d: Buffer) => {
      peer.log = (peer.log + d.toString('utf8')).slice(-16_384);
    });
    const rl = readline.createInterface({ input: child.stdout! });
    const ready = new Promise<Answer>((resolve) => peer.waiting.push(resolve));
    rl.on('line', (line) => {
      if (!line.startsWith('@@')) {
        peer.log = (peer.log + line + '\n').slice(-16_384);
        return;
      }
      peer.waiting.shift()?.(JSON.parse(line.slice(2)) as Answer);
    });
    const hello = await Promise.race([ready, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`python peer did not start:\n${peer.log}`)), 30_000))]);
    expect(hello.ready).toBe(true);
    return peer;
  }

  async call(cmd: Record<string, unknown>): Promise<Answer> {
    const answer = new Promise<Answer>((resolve) => this.waiting.push(resolve));
    this.child.stdin!.write(JSON.stringify(cmd) + '\n');
    const a = await Promise.race([answer, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer to ${String(cmd.cmd)}:\n${this.log}`)), 30_000))]);
    if (!a.ok) throw new Error(`${String(cmd.cmd)} failed: ${a.error ?? JSON.stringify(a)}\n${this.log}`);
    return a;
  }

  async stop(): Promise<void> {
    this.child.stdin!.end();
    await stopProcess(this.child, 3000);
  }
}

describe.skipIf(skip)('a Node engine and an upstream engine sharing one etcd', () => {
  let etcd: EtcdCluster;
  let inspect: MetadataStore;
  let py: PythonPeer | undefined;
  let node: TransferEngine | undefined;
  beforeAll(async () => {
    etcd = await startEtcd();
    inspect = createMetadataStore(etcd.connectionString);
  });
  afterAll(async () => {
    await node?.close().catch(() => undefined);
    await py?.stop().catch(() => undefined);
    await inspect?.close();
    await etcd?.stop();
  });

  it('find each other through etcd and move bytes both ways', async () => {
    const size = 256 * 1024;
    const conn = etcd.connectionString; // etcd://127.0.0.1:<port>, as the upstream wheel takes it
    py = await PythonPeer.start((found as { python: string }).python);
    const init = await py.call({ cmd: 'init', name: 'py-etcd', conn });
    expect(init.ret).toBe(0);
    const pyRpcPort = init.rpc_port as number;

    // What upstream wrote: plain keys, its jsoncpp FastWriter JSON (with a trailing newline).
    const rpc = await inspect.get('mooncake/rpc_meta/py-etcd');
    expect(rpc).toBe(`{"ip_or_host_name":"127.0.0.1","rpc_port":${pyRpcPort}}\n`);
    const pyAddr = BigInt((await py.call({ cmd: 'alloc', size })).addr as string);
    await py.call({ cmd: 'write', addr: pyAddr.toString(), hex: pattern(21, size).toString('hex') });
    const pyDesc = JSON.parse((await inspect.get('mooncake/ram/py-etcd'))!) as { name: string; protocol: string; buffers: unknown[] };
    expect(pyDesc).toMatchObject({ name: 'py-etcd', protocol: 'tcp' });
    expect(pyDesc.buffers).toHaveLength(1);

    node = await TransferEngine.create({ metadataServer: conn, localServerName: 'node-etcd', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    const mine = await node.allocateManagedBuffer(size);
    pattern(42, size).copy(mine.buffer!);

    // Node → upstream: open its segment from etcd, read its bytes, write ours into it.
    const seg = await node.openSegment('py-etcd');
    // The wheel hands out managed buffers from a registered pool: the published buffer contains ours.
    expect(seg.buffers.some((b) => b.address <= pyAddr && pyAddr + BigInt(size) <= b.address + BigInt(b.length))).toBe(true);
    const scratch = await node.registerMemory(Buffer.alloc(size));
    await node.read(seg, [{ local: scratch, remote: pyAddr, length: size }]);
    expect(scratch.buffer!.equals(pattern(21, size))).toBe(true);
    await node.write(seg, [{ local: mine, remote: pyAddr, length: size }]);
    const back = await py.call({ cmd: 'read', addr: pyAddr.toString(), length: size });
    expect(Buffer.from(back.hex as string, 'hex').equals(pattern(42, size))).toBe(true);

    // Upstream → Node: it finds our segment in etcd (our plain JSON, no trailing newline) and transfers.
    const first = await py.call({ cmd: 'first_buffer', segment: 'node-etcd' });
    expect(BigInt(first.addr as string)).toBe(mine.address);
    await py.call({ cmd: 'write', addr: pyAddr.toString(), hex: pattern(77, size).toString('hex') });
    const w = await py.call({ cmd: 'transfer', target: 'node-etcd', op: 'write', local: pyAddr.toString(), remote: mine.address.toString(), length: size });
    expect(w.ret).toBe(0);
    expect(mine.buffer!.equals(pattern(77, size))).toBe(true);
    pattern(99, size).copy(mine.buffer!);
    const r = await py.call({ cmd: 'transfer', target: 'node-etcd', op: 'read', local: pyAddr.toString(), remote: mine.address.toString(), length: size });
    expect(r.ret).toBe(0);
    const got = await py.call({ cmd: 'read', addr: pyAddr.toString(), length: size });
    expect(Buffer.from(got.hex as string, 'hex').equals(pattern(99, size))).toBe(true);

    await node.close();
    node = undefined;
    expect(await inspect.get('mooncake/ram/node-etcd')).toBeUndefined();
    expect(await inspect.get('mooncake/rpc_meta/node-etcd')).toBeUndefined();
  });
});
