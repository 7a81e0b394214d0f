/** Spawns test/reliability/fixtures/node.cjs (one engine per process) and talks to it in JSON lines. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { procSample, type ProcSample } from './proc';

export interface ArenaSpec {
  guard: number;
  seed?: number;
  parts: { size: number; remoteAccessible?: boolean }[];
}

export interface NodeConfig {
  metadataServer: string;
  localServerName?: string;
  bindAddress?: string;
  advertiseAddress?: string;
  options?: Record<string, unknown>;
  arenas?: ArenaSpec[];
  memory?: number;
}

export interface ArenaInfo {
  address: string;
  length: number;
  guard: number;
  parts: { offset: number; address: string; length: number; remoteAccessible: boolean }[];
}

export interface NodeInfo {
  pid: number;
  name: string;
  rpcPort: number;
  dataPort: number;
  arenas: ArenaInfo[];
}

export interface SpawnOptions {
  /** Runs the fixture under this command prefix, e.g. ['ip', 'netns', 'exec', 'ns1'] or ['prlimit', '--nofile=4096:4096']. */
  prefix?: string[];
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export const FIXTURE = path.join(__dirname, '../fixtures/node.cjs');

export class NodeProc {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void; cmd: string }>();
  readonly exited: Promise<number | null>;
  /** Everything the process wrote on stderr (for failure messages). */
  stderr = '';

  private constructor(readonly child: ChildProcess, readonly info: NodeInfo) {
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
      else child.once('exit', (code) => resolve(code));
    });
    child.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error(`node ${info.name} exited during '${w.cmd}'`));
      this.waiting.clear();
    });
  }

  static async spawn(cfg: NodeConfig, opts: SpawnOptions = {}): Promise<NodeProc> {
    const argv = [...(opts.prefix ?? []), process.execPath, '--expose-gc', FIXTURE, JSON.stringify(cfg)];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.length > 20_000) stderr = stderr.slice(-20_000);
    });
    const rl = readline.createInterface({ input: child.stdout! });
    const first = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`node did not start within ${opts.timeoutMs ?? 20_000} ms: ${stderr}`));
      }, opts.timeoutMs ?? 20_000);
      child.once('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`node exited (${code}) before it was ready: ${stderr}`));
      });
      rl.once('line', (l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
    const hello = JSON.parse(first) as { ready: boolean; error?: { code: string; message: string } } & NodeInfo;
    if (!hello.ready) {
      child.kill('SIGKILL');
      throw Object.assign(new Error(hello.error?.message ?? 'node failed to start'), { code: hello.error?.code });
    }
    const node = new NodeProc(child, { pid: hello.pid, name: hello.name, rpcPort: hello.rpcPort, dataPort: hello.dataPort, arenas: hello.arenas });
    node.stderr = stderr;
    child.stderr!.on('data', (d: Buffer) => {
      node.stderr = (node.stderr + d.toString()).slice(-20_000);
    });
    rl.on('line', (l) => node.onLine(l));
    return node;
  }

  get pid(): number {
    return this.info.pid;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  private onLine(line: string): void {
    let msg: { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return;
    }
    const w = this.waiting.get(msg.id);
    if (!w) return;
    this.waiting.delete(msg.id);
    if (msg.ok) w.resolve(msg.result);
    else w.reject(Object.assign(new Error(msg.error?.message ?? 'failed'), { code: msg.error?.code }));
  }

  /** Sends one command; rejects with the engine's error (its `code` kept) or after `timeoutMs`. */
  call<T = unknown>(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      if (!this.alive) return reject(new Error(`node ${this.info.name} is not running ('${cmd}')`));
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`'${cmd}' on ${this.info.name} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(t);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
        cmd,
      });
      this.child.stdin!.write(JSON.stringify({ id, cmd, args }) + '\n');
    });
  }

  /** Like call, but resolves with the error code instead of rejecting ('OK' on success). */
  async code(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<string> {
    try {
      await this.call(cmd, args, timeoutMs);
      return 'OK';
    } catch (e) {
      return (e as { code?: string }).code ?? `NO_CODE: ${(e as Error).message}`;
    }
  }

  stats(): Promise<Record<string, number>> {
    return this.call('stats');
  }

  /** /proc counts after a GC in the process (so the RSS figure is not just garbage waiting). */
  async sample(): Promise<ProcSample> {
    await this.call('gc');
    return procSample(this.pid);
  }

  /** Asks the engine to close, then waits (bounded) for the process to exit; SIGKILL past that. */
  async close(timeoutMs = 10_000): Promise<number | null> {
    if (!this.alive) return this.child.exitCode;
    this.call('close', {}, timeoutMs).catch(() => undefined);
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) this.child.kill(signal);
  }
}

/** Closes every node, killing any that does not exit in time. Never throws. */
export async function closeAll(nodes: (NodeProc | undefined)[]): Promise<void> {
  await Promise.all(nodes.map((n) => n?.close().catch(() => n.kill())));
}
