/**
 * Drives test/interop/peers/handshake_peer.py: a real upstream Mooncake engine
 * (mooncake.engine.TransferEngine from the PyPI wheel) in a child process.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { SETUP_COMMAND, upstreamEnv, upstreamPeer } from '../../helpers/upstream';

export const PEER_SCRIPT = path.join(__dirname, 'handshake_peer.py');
export { SETUP_COMMAND };

/** The upstream Python, from the shared helper (test/helpers/upstream.ts), or why it is missing. */
export function findUpstreamPython(): { python: string; version: string } | { skipReason: string } {
  const peer = upstreamPeer();
  return 'skipReason' in peer ? peer : { python: peer.python, version: peer.version };
}

// Safety net: whatever is still running when the test worker exits is killed.
const live = new Set<ChildProcessWithoutNullStreams>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

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
    live.add(child);
    this.exit = new Promise((resolve) => {
      child.on('exit', (code) => {
        live.delete(child);
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

  /** Starts the peer script and waits for its first answer. */
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
