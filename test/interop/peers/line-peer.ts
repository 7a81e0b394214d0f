/**
 * The Node side of peer_common.py: an upstream-engine Python script in a child process, one JSON
 * command per stdin line, one answer per command on a stdout line starting with "@@". Everything else
 * the process writes (stdout and stderr) is kept as a log tail for error messages.
 *
 * Every wait is bounded; commands are sent one at a time; the process is SIGKILLed when the test
 * worker exits (test/helpers/server-process.ts `track`) if a test forgot to stop it.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { track } from '../../helpers/server-process';
import { upstreamEnv } from '../../helpers/upstream';

export type PeerReply = { ok: boolean; error?: string; [k: string]: unknown };

export interface LinePeerStart {
  /** Added to upstreamEnv(), e.g. `{ MC_TCP_PROTO: '1' }`. */
  env?: Record<string, string>;
  args?: string[];
  /** How long the script may take to send its first ("ready") answer. */
  timeoutMs?: number;
}

export class LinePeer {
  readonly exit: Promise<number | null>;
  /** The script's file name, in error messages. */
  readonly name: string;
  private exited = false;
  private buf = '';
  private readonly lines: string[] = [];
  private waiter: ((line: string | null) => void) | undefined;
  private log = '';
  private chain: Promise<unknown> = Promise.resolve();

  protected constructor(protected readonly child: ChildProcessWithoutNullStreams, script: string) {
    this.name = path.basename(script);
    track(child);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (!line.startsWith('@@')) {
          this.append(line + '\n');
          continue;
        }
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = undefined;
          w(line.slice(2));
        } else this.lines.push(line.slice(2));
      }
    });
    child.stderr.on('data', (d: string) => this.append(d));
    child.stdin.on('error', () => {});
    this.exit = new Promise((resolve) => {
      child.on('exit', (code) => {
        this.exited = true;
        const w = this.waiter;
        this.waiter = undefined;
        w?.(null);
        resolve(code);
      });
    });
  }

  /** Spawns `script` in the upstream `python` and waits for its first answer; stops it if that fails. */
  protected static async launch<P extends LinePeer>(
    make: (child: ChildProcessWithoutNullStreams) => P,
    python: string,
    script: string,
    options: LinePeerStart = {},
  ): Promise<{ peer: P; hello: PeerReply }> {
    const child = spawn(python, [script, ...(options.args ?? [])], { env: upstreamEnv(options.env ?? {}), stdio: ['pipe', 'pipe', 'pipe'] });
    const peer = make(child);
    try {
      return { peer, hello: await peer.read(options.timeoutMs ?? 60_000) };
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  /** The process's log output so far (tail). */
  get output(): string {
    return this.log;
  }

  private append(s: string): void {
    this.log += s;
    if (this.log.length > 200_000) this.log = this.log.slice(-100_000);
  }

  private tail(): string {
    return `output tail:\n${this.log.slice(-3000)}`;
  }

  private read(timeoutMs: number): Promise<PeerReply> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(JSON.parse(queued) as PeerReply);
    if (this.exited) return Promise.reject(new Error(`${this.name} exited; ${this.tail()}`));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`${this.name} did not answer within ${timeoutMs} ms; ${this.tail()}`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(t);
        if (line === null) reject(new Error(`${this.name} exited; ${this.tail()}`));
        else resolve(JSON.parse(line) as PeerReply);
      };
    });
  }

  /** Sends one command and returns its answer, ok or not. Commands are serialized. */
  send(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<PeerReply> {
    const run = async (): Promise<PeerReply> => {
      if (this.exited) throw new Error(`${this.name} has exited; ${this.tail()}`);
      this.child.stdin.write(JSON.stringify(cmd) + '\n');
      return this.read(timeoutMs);
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Sends one command; throws unless the answer is ok. */
  async call(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<PeerReply> {
    const r = await this.send(cmd, timeoutMs);
    if (!r.ok) throw new Error(`${this.name} ${String(cmd.cmd)} failed: ${JSON.stringify(r)}\n${this.tail()}`);
    return r;
  }

  /**
   * Closes stdin (after `lastLine`, if given), waits `graceMs` for the process to exit, then SIGTERM,
   * then SIGKILL; resolves once the process is gone. Always bounded.
   */
  async stop(lastLine?: string, graceMs = 2000): Promise<void> {
    if (this.exited) return;
    const waitExit = (ms: number): Promise<boolean> => Promise.race([this.exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
    if (lastLine === undefined) this.child.stdin.end();
    else this.child.stdin.end(lastLine);
    if (await waitExit(graceMs)) return;
    this.child.kill('SIGTERM');
    if (await waitExit(3000)) return;
    this.child.kill('SIGKILL');
    await waitExit(5000);
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
