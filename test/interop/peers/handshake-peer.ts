/**
 * Drives test/interop/peers/handshake_peer.py: a real upstream Mooncake engine
 * (mooncake.engine.TransferEngine from the PyPI wheel) in a child process.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';

const REPO = path.resolve(__dirname, '../../..');
export const PEER_SCRIPT = path.join(__dirname, 'handshake_peer.py');
export const SETUP_COMMAND = 'bash scripts/setup-upstream-peer.sh';

/**
 * The upstream Python: $MOONCAKE_UPSTREAM_VENV/bin/python if that variable is set; otherwise
 * <repo>/.venv-upstream/bin/python, else the prototype venv /tmp/mcvenv/bin/python. Kept in one place so it can switch to
 * test/helpers/upstream.ts (upstreamPeer()) once that lands.
 */
export function findUpstreamPython(): { python: string } | { skipReason: string } {
  // An explicit MOONCAKE_UPSTREAM_VENV is the only candidate (no silent fallback).
  const candidates = process.env.MOONCAKE_UPSTREAM_VENV
    ? [path.join(process.env.MOONCAKE_UPSTREAM_VENV, 'bin/python')]
    : [path.join(REPO, '.venv-upstream/bin/python'), '/tmp/mcvenv/bin/python'];
  const python = candidates.find((p) => existsSync(p));
  if (!python) return { skipReason: `no upstream Python venv found (looked at ${candidates.join(', ')})` };
  const r = spawnSync(python, ['-c', 'import mooncake.engine, mooncake.http_metadata_server'], { env: upstreamEnv(), timeout: 60_000, encoding: 'utf8' });
  if (r.status !== 0) return { skipReason: `${python} cannot import mooncake.engine: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}` };
  return { python };
}

/** Environment for upstream processes: loopback advertised, no TENT, no proxies. */
export function upstreamEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
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

export type PeerReply = { ok: boolean; error?: string; [k: string]: unknown };

export class PythonPeer {
  private buf = '';
  private readonly lines: string[] = [];
  private waiter: ((line: string | null) => void) | undefined;
  private errText = '';
  private exited = false;
  readonly exit: Promise<number | null>;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (!line.startsWith('@@')) continue;
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = undefined;
          w(line.slice(2));
        } else this.lines.push(line.slice(2));
      }
    });
    child.stderr.on('data', (d: string) => {
      this.errText += d;
      if (this.errText.length > 200_000) this.errText = this.errText.slice(-100_000);
    });
    child.stdin.on('error', () => {});
    this.exit = new Promise((resolve) => {
      child.on('exit', (code) => {
        this.exited = true;
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = undefined;
          w(null);
        }
        resolve(code);
      });
    });
  }

  /** Starts the peer script (`args` e.g. ['metadata-server']) and waits for its first answer. */
  static async start(python: string, args: string[] = [], env: Record<string, string> = {}): Promise<{ peer: PythonPeer; hello: PeerReply }> {
    const child = spawn(python, [PEER_SCRIPT, ...args], { env: upstreamEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    const peer = new PythonPeer(child);
    try {
      const hello = await peer.read(60_000);
      return { peer, hello };
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  get stderr(): string {
    return this.errText;
  }

  private read(timeoutMs: number): Promise<PeerReply> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(JSON.parse(queued) as PeerReply);
    if (this.exited) return Promise.reject(new Error(`upstream peer exited; stderr tail:\n${this.errText.slice(-3000)}`));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`upstream peer did not answer within ${timeoutMs} ms; stderr tail:\n${this.errText.slice(-3000)}`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(t);
        if (line === null) reject(new Error(`upstream peer exited; stderr tail:\n${this.errText.slice(-3000)}`));
        else resolve(JSON.parse(line) as PeerReply);
      };
    });
  }

  /** Sends one command and waits (bounded) for its answer; throws if the answer is not ok. */
  async call(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<PeerReply> {
    const r = await this.send(cmd, timeoutMs);
    if (!r.ok) throw new Error(`upstream peer ${String(cmd.cmd)} failed: ${JSON.stringify(r)}\nstderr tail:\n${this.errText.slice(-3000)}`);
    return r;
  }

  /** Sends one command and returns its answer, ok or not. */
  send(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<PeerReply> {
    this.child.stdin.write(JSON.stringify(cmd) + '\n');
    return this.read(timeoutMs);
  }

  /** Stops the process: closes stdin, then SIGTERM, then SIGKILL; always bounded. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const waitExit = (ms: number): Promise<boolean> => Promise.race([this.exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
    this.child.stdin.end();
    if (await waitExit(2000)) return;
    this.child.kill('SIGTERM');
    if (await waitExit(3000)) return;
    this.child.kill('SIGKILL');
    await waitExit(5000);
  }
}
