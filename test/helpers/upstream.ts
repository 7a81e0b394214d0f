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

export const SETUP_COMMAND = 'scripts/setup-upstream-peer.sh';
export const UPSTREAM_VERSION = '0.3.13.post1';
const MARKER = '.mooncake-upstream.json';

export interface UpstreamPeer {
  venv: string;
  python: string;
  /** The native `transfer_engine_bench` ELF inside the wheel (not the Python wrapper in bin/, which
   * would leave the binary running when killed). */
  bench: string;
  /** The `mooncake_http_metadata_server` console script (run it with `python`). */
  metadataServer: string;
  version: string;
}

export const repoRoot = path.resolve(__dirname, '..', '..');

/** The upstream peer's paths, or why it is unavailable. */
export function upstreamPeer(): UpstreamPeer | { skipReason: string } {
  const fromEnv = process.env.MOONCAKE_UPSTREAM_VENV;
  const venv = path.resolve(fromEnv && fromEnv.length > 0 ? fromEnv : path.join(repoRoot, '.venv-upstream'));
  const how = `run ${SETUP_COMMAND}${fromEnv ? ` (MOONCAKE_UPSTREAM_VENV=${fromEnv})` : ''}`;
  if (!fs.existsSync(venv)) return { skipReason: `upstream Mooncake venv not found at ${venv}; ${how}` };
  const python = path.join(venv, 'bin', 'python');
  if (!isExecutable(python)) return { skipReason: `${python} is missing or not executable; ${how}` };
  const metadataServer = path.join(venv, 'bin', 'mooncake_http_metadata_server');
  if (!fs.existsSync(metadataServer)) return { skipReason: `${metadataServer} is missing; ${how}` };

  const sitePackages = findSitePackages(venv);
  if (!sitePackages) return { skipReason: `no site-packages with the mooncake package under ${venv}/lib; ${how}` };
  const bench = path.join(sitePackages, 'mooncake', 'transfer_engine_bench');
  if (!fs.existsSync(bench)) return { skipReason: `${bench} is missing; ${how}` };

  let version: string | undefined;
  try {
    const marker = JSON.parse(fs.readFileSync(path.join(venv, MARKER), 'utf8')) as { version?: unknown };
    if (typeof marker.version === 'string') version = marker.version;
  } catch {
    // No marker (a venv made by hand): read the version from the dist-info directory.
  }
  if (version === undefined) {
    const distInfo = fs.readdirSync(sitePackages).find((n) => /^mooncake_transfer_engine[a-z0-9_]*-.+\.dist-info$/.test(n));
    version = distInfo?.replace(/^mooncake_transfer_engine[a-z0-9_]*-/, '').replace(/\.dist-info$/, '');
  }
  if (version === undefined) return { skipReason: `cannot tell which Mooncake version is installed in ${venv}; ${how}` };
  return { venv, python, bench, metadataServer, version };
}

/** Environment for upstream processes: loopback advertisement, classic engine, no proxies. */
export function upstreamEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/_proxy$/i.test(k)) continue;
    if (k === 'MC_USE_TENT' || k === 'MC_USE_TEV1') continue;
    env[k] = v;
  }
  env.MC_TCP_BIND_ADDRESS = '127.0.0.1';
  env.PYTHONUNBUFFERED = '1';
  return { ...env, ...extra };
}

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

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function findSitePackages(venv: string): string | undefined {
  const lib = path.join(venv, 'lib');
  if (!fs.existsSync(lib)) return undefined;
  for (const name of fs.readdirSync(lib).filter((n) => n.startsWith('python')).sort().reverse()) {
    const sp = path.join(lib, name, 'site-packages');
    if (fs.existsSync(path.join(sp, 'mooncake'))) return sp;
  }
  return undefined;
}
