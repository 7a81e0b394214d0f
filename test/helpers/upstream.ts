/**
 * Finds and starts the real upstream Mooncake peer installed by scripts/setup-upstream-peer.sh.
 *
 * - `upstreamPeer()` looks in `<repo>/.venv-upstream` (or `$MOONCAKE_UPSTREAM_VENV`) and returns the
 *   paths, or `{ skipReason }` explaining how to install it.
 * - `upstreamEnv()` is the environment upstream processes must run with: `MC_TCP_BIND_ADDRESS=127.0.0.1`
 *   (tests are loopback-only), no `MC_USE_TENT`/`MC_USE_TEV1` (classic engine), no proxy variables.
 * - `spawnUpstreamMetadataServer()` starts `mooncake_http_metadata_server` on 127.0.0.1 and a free port.
 *
 * Every process started here is also killed when the test worker exits, even if a test forgot to.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { findUpstream, upstreamEnv, UPSTREAM_PINNED_VERSION, type UpstreamInstall } from '../../lib/upstream-peer';

export const SETUP_COMMAND = 'scripts/setup-upstream-peer.sh';
export const UPSTREAM_VERSION = UPSTREAM_PINNED_VERSION;
export type UpstreamPeer = UpstreamInstall;

export const repoRoot = path.resolve(__dirname, '..', '..');

/** The upstream peer's paths, or why it is unavailable (the same lookup `bench --compare` uses). */
export function upstreamPeer(): UpstreamPeer | { skipReason: string } {
  return findUpstream(repoRoot);
}

/** Environment for upstream processes: loopback advertisement, classic engine, no proxies. */
export { upstreamEnv };

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

// --- process bookkeeping ----------------------------------------------------------------------------

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of live) {
        try {
          c.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

export interface UpstreamMetadataServer {
  /** `http://127.0.0.1:<port>/metadata` */
  url: string;
  port: number;
  process: ChildProcess;
  /** The process's output so far (for diagnostics). */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts upstream's `mooncake_http_metadata_server --host 127.0.0.1 --port <free>` and waits until it
 * answers HTTP (at most `timeoutMs`). Throws with the process output when it does not come up.
 */
export async function spawnUpstreamMetadataServer(options: { timeoutMs?: number } = {}): Promise<UpstreamMetadataServer> {
  const peer = upstreamPeer();
  if ('skipReason' in peer) throw new Error(peer.skipReason);
  const timeoutMs = options.timeoutMs ?? 20_000;
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(peer.python, [peer.metadataServer, '--host', '127.0.0.1', '--port', String(port)], {
      env: upstreamEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: repoRoot,
    });
    track(child);
    let out = '';
    const collect = (b: Buffer): void => {
      out = (out + b.toString('utf8')).slice(-16_384);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const url = `http://127.0.0.1:${port}/metadata`;
    const server: UpstreamMetadataServer = { url, port, process: child, output: () => out, stop: () => stopProcess(child) };
    try {
      await waitForHttp(url, child, timeoutMs);
      return server;
    } catch (e) {
      await stopProcess(child, 1000);
      lastError = new Error(`${(e as Error).message}\n--- mooncake_http_metadata_server output ---\n${out}`);
      if (!/address already in use|Errno 98/i.test(out)) break; // only a port race is worth retrying
    }
  }
  throw lastError ?? new Error('mooncake_http_metadata_server did not start');
}

/** Polls `GET <url>` (no key: upstream answers 400) until any HTTP answer arrives. */
async function waitForHttp(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`mooncake_http_metadata_server exited early (code ${child.exitCode}, signal ${child.signalCode})`);
    }
    const status = await new Promise<number | undefined>((resolve) => {
      const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(undefined));
    });
    if (status !== undefined) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`mooncake_http_metadata_server did not answer at ${url} within ${timeoutMs} ms`);
}
