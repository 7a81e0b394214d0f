/**
 * The parent side of the JSON-lines protocol of test/fixtures/peer.cjs and kv-group.cjs: the child's
 * first stdout line is `{ ready: true, ... }` (or `{ ready: false, error }`), then every command
 * `{ id, cmd, args }` on stdin is answered by `{ id, ok, result | error: { code, message } }`.
 * Peer (helpers/peer.ts) and KvGroup (kv/group.ts) add what their fixture does beyond that.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as readline from 'node:readline';

export type FixtureHello = { ready: boolean; error?: { code: string; message: string } } & Record<string, unknown>;

export interface FixtureReply {
  id?: number;
  ok?: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

export abstract class FixtureProcess {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  readonly exited: Promise<number | null>;

  /** `what` names the process in errors ("peer", "group"). */
  protected constructor(readonly child: ChildProcess, what: string) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    child.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error(`${what} exited`));
      this.waiting.clear();
    });
  }

  /**
   * Runs `node <fixture> <cfg as JSON>` and waits (at most `timeoutMs`) for its first line; throws,
   * with the fixture's error code, if it says it is not ready. `lines` then carries the replies.
   * `env` is added to this process's environment for the child.
   */
  protected static async startFixture(fixture: string, cfg: unknown, what: string, timeoutMs: number, env: NodeJS.ProcessEnv = {}): Promise<{ child: ChildProcess; lines: readline.Interface; hello: FixtureHello }> {
    const child = spawn(process.execPath, [fixture, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...env } });
    const lines = readline.createInterface({ input: child.stdout! });
    const first = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${what} did not start`));
      }, timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`${what} exited (${code}) before it was ready`));
      });
      lines.once('line', (l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
    const hello = JSON.parse(first) as FixtureHello;
    if (!hello.ready) {
      child.kill('SIGKILL');
      throw Object.assign(new Error(hello.error?.message ?? `${what} failed`), { code: hello.error?.code });
    }
    return { child, lines, hello };
  }

  /** Settles the call `msg` answers (an error keeps the fixture's `code`). */
  protected settle(msg: FixtureReply): void {
    const w = this.waiting.get(msg.id!);
    if (!w) return;
    this.waiting.delete(msg.id!);
    if (msg.ok) w.resolve(msg.result);
    else w.reject(Object.assign(new Error(msg.error?.message), { code: msg.error?.code }));
  }

  call<T = unknown>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin!.write(JSON.stringify({ id, cmd, args }) + '\n');
    });
  }

  /** Sends `close`, ends stdin, then waits (bounded: SIGKILL after `timeoutMs`) for the process to exit. */
  async close(timeoutMs = 10_000): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    this.call('close').catch(() => undefined);
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}
