/**
 * A Python peer driven by JSON lines (the connector drivers of test/connectors/peers: one command per
 * stdin line, one answer per command on a stdout line starting with "@@"). Every wait is bounded and
 * `stop()` always ends the process.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { MooncakeError } from '../../errors';
import { upstreamEnv } from '../../tools/upstream-peer';

export type PeerAnswer = { ok: boolean; error?: string } & Record<string, unknown>;

export class PythonPeer {
  private buf = '';
  private log = '';
  private readonly answers: string[] = [];
  private waiter: ((line: string | null) => void) | undefined;
  private exited = false;
  private chain: Promise<unknown> = Promise.resolve();
  readonly exit: Promise<void>;

  private constructor(private readonly child: ChildProcessWithoutNullStreams, private readonly name: string) {
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (!line.startsWith('@@')) this.append(line + '\n');
        else if (this.waiter) {
          const w = this.waiter;
          this.waiter = undefined;
          w(line.slice(2));
        } else this.answers.push(line.slice(2));
      }
    });
    child.stderr.on('data', (d: string) => this.append(d));
    child.stdin.on('error', () => undefined);
    this.exit = new Promise((resolve) =>
      child.once('exit', () => {
        this.exited = true;
        this.waiter?.(null);
        this.waiter = undefined;
        resolve();
      }),
    );
  }

  /** Starts `script` with `python` and waits for its first ("ready") answer. */
  static async start(python: string, script: string, env: NodeJS.ProcessEnv = {}): Promise<PythonPeer> {
    const child = spawn(python, [script], { env: upstreamEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    const peer = new PythonPeer(child, path.basename(script));
    try {
      const hello = await peer.read(60_000);
      if (!hello.ok) throw new MooncakeError('PROTOCOL_ERROR', `${peer.name} did not start: ${JSON.stringify(hello)}`);
      return peer;
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  private append(s: string): void {
    this.log = (this.log + s).slice(-20_000);
  }

  private read(timeoutMs: number): Promise<PeerAnswer> {
    const queued = this.answers.shift();
    if (queued !== undefined) return Promise.resolve(JSON.parse(queued) as PeerAnswer);
    if (this.exited) return Promise.reject(new MooncakeError('CLOSED', `${this.name} exited: ${this.log.slice(-2000)}`));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new MooncakeError('TIMEOUT', `${this.name} did not answer within ${timeoutMs} ms: ${this.log.slice(-2000)}`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(t);
        if (line === null) reject(new MooncakeError('CLOSED', `${this.name} exited: ${this.log.slice(-2000)}`));
        else resolve(JSON.parse(line) as PeerAnswer);
      };
    });
  }

  /** One command; rejects unless the answer is ok. Commands run one at a time. */
  call(cmd: Record<string, unknown>, timeoutMs = 120_000): Promise<PeerAnswer> {
    const run = async (): Promise<PeerAnswer> => {
      if (this.exited) throw new MooncakeError('CLOSED', `${this.name} has exited: ${this.log.slice(-2000)}`);
      this.child.stdin.write(JSON.stringify(cmd) + '\n');
      const a = await this.read(timeoutMs);
      if (!a.ok) throw new MooncakeError('PROTOCOL_ERROR', `${this.name} ${String(cmd.cmd)} failed: ${a.error ?? JSON.stringify(a)}`);
      return a;
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Closes stdin, then SIGTERM, then SIGKILL; resolves once the process is gone. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = (ms: number) => Promise.race([this.exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    this.child.stdin.end(JSON.stringify({ cmd: 'exit' }) + '\n');
    if (await gone(3000)) return;
    this.child.kill('SIGTERM');
    if (await gone(3000)) return;
    this.child.kill('SIGKILL');
    await gone(5000);
  }
}
