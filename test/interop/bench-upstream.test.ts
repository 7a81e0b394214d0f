/**
 * Upstream's own `transfer_engine_bench` (the native binary from the wheel
 * mooncake-transfer-engine-non-cuda 0.3.13.post1) against our engine, TCP over 127.0.0.1, HTTP metadata:
 *
 * - upstream initiator → Node target (our MetadataServer): `--operation=write` for 30 s, then `read`
 *   for 5 s. Upstream's initiator `exit(1)`s on any FAILED task; we also check that Node served exactly
 *   the requests upstream counted, rejected none, and that the written bytes landed.
 * - Node initiator → upstream target (upstream's mooncake_http_metadata_server): the same request
 *   pattern as upstream's initiator (thread t, request i at block*(i*threads+t) from buffers[0]),
 *   write for 30 s then read for 5 s, no errors, and the bytes read back equal the bytes written.
 *
 * The Node side runs in its own process (test/interop/peers/node-bench.cjs, from dist/: run
 * `npm run build` first) so that the two engines do not share this worker's event loop.
 * `MOONCAKE_INTEROP_BENCH_SECONDS` shortens or lengthens the 30 s write runs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpMetadataStore, MetadataServer, segmentKey } from '../../lib/metadata';
import { stopProcess } from '../helpers/server-process';
import {
  SETUP_COMMAND,
  UPSTREAM_VERSION,
  repoRoot,
  spawnUpstreamMetadataServer,
  upstreamEnv,
  upstreamPeer,
  type UpstreamPeer,
} from '../helpers/upstream';

const up = upstreamPeer();
const skipReason = 'skipReason' in up ? up.skipReason : undefined;
if (skipReason) {
  console.warn(
    `\n[bench-upstream] SKIPPING upstream transfer_engine_bench interop: ${skipReason}\n` +
      `[bench-upstream] Install the upstream peer (mooncake-transfer-engine-non-cuda ${UPSTREAM_VERSION}) with: bash ${SETUP_COMMAND}   (or set MOONCAKE_UPSTREAM_VENV)\n`,
  );
}
const DIST = path.join(repoRoot, 'dist', 'index.js');
const NODE_BENCH = path.join(__dirname, 'peers', 'node-bench.cjs');

const WRITE_SECONDS = Number(process.env.MOONCAKE_INTEROP_BENCH_SECONDS ?? '') || 30;
const READ_SECONDS = 5;
const BLOCK = 65_536;
const BATCH = 32;
const THREADS = 2;
const ROUND = BLOCK * BATCH * THREADS; // what one round of the bench touches on each side
const BUFFER = 16 << 20;

const children: ChildProcess[] = [];
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => stopProcess(c, 5000)));
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A child whose output is collected, with bounded waits for lines and exit. */
class Proc {
  output = '';
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;
  readonly exited: Promise<number | null>;

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
  ) {
    children.push(child);
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    const keep = (d: Buffer): void => {
      this.output = (this.output + d.toString('utf8')).slice(-200_000);
    };
    child.stderr!.on('data', keep);
    readline.createInterface({ input: child.stdout! }).on('line', (l) => {
      keep(Buffer.from(l + '\n'));
      this.lines.push(l);
      this.wake?.();
    });
    void this.exited.then(() => this.wake?.());
  }

  /** The next stdout line that parses as JSON (bounded). */
  async json(timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.lines.length) {
        const l = this.lines.shift()!;
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          // a log line
        }
      }
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`${this.label} exited (${this.child.exitCode ?? this.child.signalCode}):\n${this.output.slice(-4000)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.label}: no answer within ${timeoutMs} ms:\n${this.output.slice(-4000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  async exit(timeoutMs: number): Promise<number | null> {
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

function nodeBench(cfg: Record<string, unknown>): Proc {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/_proxy$/i.test(k)) env[k] = v;
  const child = spawn(process.execPath, [NODE_BENCH, JSON.stringify(cfg)], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  return new Proc(`node-bench ${String(cfg.mode)}`, child);
}

function upstreamBench(peer: UpstreamPeer, args: string[]): Proc {
  const child = spawn(peer.bench, ['--protocol=tcp', `--report_unit=GB`, ...args], { env: upstreamEnv(), stdio: ['ignore', 'pipe', 'pipe'], cwd: repoRoot });
  return new Proc(`transfer_engine_bench ${args.find((a) => a.startsWith('--mode=')) ?? ''}`, child);
}

interface UpstreamResult {
  seconds: number;
  batches: number;
  gbps: number;
}

/** Upstream's report line, as glog writes it on stderr. */
function parseReport(log: string): UpstreamResult | undefined {
  const m = /Test completed: duration ([\d.]+), batch count (\d+), throughput ([\d.]+) GB\/s/.exec(log);
  return m ? { seconds: Number(m[1]), batches: Number(m[2]), gbps: Number(m[3]) } : undefined;
}

/** Lines in which upstream's TCP transport or its bench reports a failed request. */
function transportErrors(log: string): string[] {
  return log.split('\n').filter((l) => /^E\d{4} .*(tcp_transport|transfer_engine_bench|Session)|failures in this batch|Transfer failed/.test(l));
}

const results: string[] = [];

describe.skipIf(skipReason !== undefined)(`upstream transfer_engine_bench (${UPSTREAM_VERSION}) against Node, ${WRITE_SECONDS} s each way`, () => {
  it(`upstream initiator → Node target: write ${WRITE_SECONDS} s, read ${READ_SECONDS} s, no failed task`, async () => {
    expect(fs.existsSync(DIST), `${DIST} is missing: run npm run build first`).toBe(true);
    const peer = up as UpstreamPeer;
    const meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen(0, '127.0.0.1');
    cleanups.push(() => meta.close());

    const target = nodeBench({ mode: 'target', metadataServer: url, name: `node-bench-target-${process.pid}`, bufferSize: BUFFER, round: ROUND });
    const ready = await target.json(30_000);
    expect(ready.ready, JSON.stringify(ready)).toBe(true);
    const segment = ready.segment as string;
    const report = async () => {
      target.child.stdin!.write('report\n');
      return (await target.json(15_000)) as { sha256: string; stats: Record<string, number> };
    };
    const before = await report();

    const run = async (operation: 'write' | 'read', seconds: number) => {
      const init = upstreamBench(peer, [
        '--mode=initiator',
        `--metadata_server=${url}`,
        `--local_server_name=upstream-bench-initiator-${process.pid}-${operation}`,
        `--segment_id=${segment}`,
        `--operation=${operation}`,
        `--block_size=${BLOCK}`,
        `--batch_size=${BATCH}`,
        `--threads=${THREADS}`,
        `--buffer_size=${ROUND}`,
        `--duration=${seconds}`,
      ]);
      const code = await init.exit((seconds + 60) * 1000);
      const r = parseReport(init.output);
      expect(code, `transfer_engine_bench exited ${code} (it exits 1 on a FAILED task):\n${init.output.slice(-4000)}`).toBe(0);
      expect(r, init.output.slice(-4000)).toBeDefined();
      expect(transportErrors(init.output)).toEqual([]);
      expect(r!.batches).toBeGreaterThan(0);
      results.push(`upstream initiator → Node target, ${operation} ${BLOCK / 1024} KiB x ${BATCH} x ${THREADS} threads: ${r!.gbps} GB/s (${r!.batches} batches in ${r!.seconds} s)`);
      return r!;
    };

    const w = await run('write', WRITE_SECONDS);
    const afterWrite = await report();
    // Node served exactly the requests upstream counted, and rejected none.
    expect(afterWrite.stats.requestsServed! - before.stats.requestsServed!).toBe(w.batches * BATCH);
    expect(afterWrite.stats.requestsRejected).toBe(0);
    // The bytes landed: the range upstream wrote no longer holds Node's initial random fill.
    expect(afterWrite.sha256).not.toBe(before.sha256);

    const r = await run('read', READ_SECONDS);
    const afterRead = await report();
    expect(afterRead.stats.requestsServed! - afterWrite.stats.requestsServed!).toBe(r.batches * BATCH);
    expect(afterRead.stats.requestsRejected).toBe(0);
    expect(afterRead.sha256).toBe(afterWrite.sha256); // reads do not change the target

    target.child.stdin!.end();
    expect(await target.exit(15_000)).toBe(0);
    console.info(`[bench-upstream] ${results.slice(-2).join('\n[bench-upstream] ')}`);
  }, (WRITE_SECONDS + READ_SECONDS + 150) * 1000);

  it(`Node initiator → upstream target: write ${WRITE_SECONDS} s, read ${READ_SECONDS} s, no errors, bytes verified`, async () => {
    expect(fs.existsSync(DIST), `${DIST} is missing: run npm run build first`).toBe(true);
    const peer = up as UpstreamPeer;
    const meta = await spawnUpstreamMetadataServer();
    cleanups.push(() => meta.stop());
    const name = `upstream-bench-target-${process.pid}`;
    const target = upstreamBench(peer, ['--mode=target', `--metadata_server=${meta.url}`, `--local_server_name=${name}`, `--buffer_size=${BUFFER}`]);
    // Ready when its descriptor carries a buffer.
    const store = new HttpMetadataStore(meta.url);
    cleanups.push(() => store.close());
    const deadline = Date.now() + 30_000;
    for (;;) {
      const d = await store.get(segmentKey(name)).catch(() => undefined);
      if (d?.includes('"addr"')) break;
      if (target.child.exitCode !== null || Date.now() > deadline) throw new Error(`upstream bench target did not come up:\n${target.output.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }

    const init = nodeBench({
      mode: 'initiator',
      metadataServer: meta.url,
      name: `node-bench-initiator-${process.pid}`,
      segment: name,
      bufferSize: ROUND,
      blockSize: BLOCK,
      batchSize: BATCH,
      threads: THREADS,
      phases: [
        { operation: 'write', seconds: WRITE_SECONDS },
        { operation: 'read', seconds: READ_SECONDS },
      ],
    });
    expect((await init.json(30_000)).ready).toBe(true);
    for (const operation of ['write', 'read']) {
      const seconds = operation === 'write' ? WRITE_SECONDS : READ_SECONDS;
      const p = (await init.json((seconds + 60) * 1000)) as { operation: string; seconds: number; batches: number; bytes: number; errors: number; firstError?: unknown; verified?: boolean };
      expect(p.operation).toBe(operation);
      expect(p.errors, JSON.stringify(p.firstError)).toBe(0);
      expect(p.batches).toBeGreaterThan(0);
      expect(p.verified, 'bytes read back from the upstream target differ from the bytes written').toBe(true);
      results.push(
        `Node initiator → upstream target, ${operation} ${BLOCK / 1024} KiB x ${BATCH} x ${THREADS} in flight: ${(p.bytes / p.seconds / 1e9).toFixed(2)} GB/s (${p.batches} batches in ${p.seconds.toFixed(2)} s)`,
      );
    }
    const done = await init.json(30_000);
    expect(done.done).toBe(true);
    expect(await init.exit(15_000)).toBe(0);
    // The upstream target logged no failed request.
    expect(transportErrors(target.output)).toEqual([]);
    await stopProcess(target.child, 10_000);
    console.info(`[bench-upstream] ${results.slice(-2).join('\n[bench-upstream] ')}`);
  }, (WRITE_SECONDS + READ_SECONDS + 150) * 1000);
});
