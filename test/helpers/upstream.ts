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
import * as path from 'node:path';
import { findUpstream, upstreamEnv, UPSTREAM_PINNED_VERSION, type UpstreamInstall } from '../../lib/tools/upstream-peer';
import { freePort, OutputTail, retryPortRace, stopProcess, track, waitServing } from './server-process';

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
  return retryPortRace(async () => {
    const port = await freePort();
    const child = spawn(peer.python, [peer.metadataServer, '--host', '127.0.0.1', '--port', String(port)], {
      env: upstreamEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: repoRoot,
    });
    track(child);
    const out = new OutputTail(16_384);
    out.attach(child);
    const url = `http://127.0.0.1:${port}/metadata`;
    const server: UpstreamMetadataServer = { url, port, process: child, output: () => out.text, stop: () => stopProcess(child) };
    try {
      await waitServing(child, () => answersHttp(url), timeoutMs, 'mooncake_http_metadata_server', url);
      return server;
    } catch (e) {
      await stopProcess(child, 1000);
      throw new Error(`${(e as Error).message}\n--- mooncake_http_metadata_server output ---\n${out.text}`);
    }
  });
}

/** Whether `GET <url>` (no key: upstream answers 400) gets any HTTP answer. */
async function answersHttp(url: string): Promise<boolean> {
  const status = await new Promise<number | undefined>((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
  return status !== undefined;
}

/** The npu wheel set up by scripts/setup-upstream-npu.sh (its own venv, empty CANN stand-ins). */
export interface UpstreamNpu {
  venv: string;
  python: string;
  library: string;
  version: string;
  /** Directory of the EMPTY CANN stand-ins (TCP only, MC_FORCE_TCP=1). */
  cannStandin: string;
}

/** The npu wheel's install (from its marker), or why it is unavailable. */
export function upstreamNpu(): UpstreamNpu | { skipReason: string } {
  const venv = path.resolve(process.env.MOONCAKE_UPSTREAM_NPU_VENV || path.join(repoRoot, '.venv-upstream-npu'));
  const marker = path.join(venv, '.mooncake-upstream-npu.json');
  const how = `run bash ${SETUP_COMMAND} (it installs the pinned mooncake-transfer-engine-npu wheel into ${venv})`;
  let m: Partial<UpstreamNpu>;
  try {
    m = JSON.parse(fs.readFileSync(marker, 'utf8')) as Partial<UpstreamNpu>;
  } catch {
    return { skipReason: `no npu wheel install at ${venv}; ${how}` };
  }
  for (const k of ['python', 'library', 'cannStandin'] as const) {
    if (!m[k] || !fs.existsSync(m[k]!)) return { skipReason: `${k} of the npu wheel install (${String(m[k])}) is missing; ${how}` };
  }
  return { venv, python: m.python!, library: m.library!, version: String(m.version), cannStandin: m.cannStandin! };
}
