/** Spawns test/fixtures/peer.cjs (a TransferEngine in its own process) and talks to it. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';

export interface PeerConfig {
  metadataServer: string;
  localServerName?: string;
  memory: number;
  managed?: boolean;
  device?: string;
  pattern?: number;
  options?: Record<string, unknown>;
}

export interface PeerInfo {
  name: string;
  address: bigint;
  length: number;
  rpcPort: number;
  dataPort: number;
}

export class Peer {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  exited: Promise<number | null>;

  private constructor(readonly child: ChildProcess, readonly info: PeerInfo) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    child.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error('peer exited'));
      this.waiting.clear();
    });
  }

  static async spawn(cfg: PeerConfig, timeoutMs = 20_000): Promise<Peer> {
    const child = spawn(process.execPath, [path.join(__dirname, '../fixtures/peer.cjs'), JSON.stringify(cfg)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const rl = readline.createInterface({ input: child.stdout! });
    const first = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('peer did not start')); }, timeoutMs);
      child.once('exit', (code) => { clearTimeout(t); reject(new Error(`peer exited (${code}) before it was ready`)); });
      rl.once('line', (l) => { clearTimeout(t); resolve(l); });
    });
    const hello = JSON.parse(first) as { ready: boolean; error?: { code: string; message: string } } & Record<string, string | number>;
    if (!hello.ready) {
      child.kill('SIGKILL');
      throw Object.assign(new Error(hello.error?.message ?? 'peer failed'), { code: hello.error?.code });
    }
    const peer = new Peer(child, {
      name: String(hello.name),
      address: BigInt(hello.address),
      length: Number(hello.length),
      rpcPort: Number(hello.rpcPort),
      dataPort: Number(hello.dataPort),
    });
    rl.on('line', (l) => peer.onLine(l));
    return peer;
  }

  private onLine(line: string): void {
    const msg = JSON.parse(line) as { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } };
    const w = this.waiting.get(msg.id);
    if (!w) return;
    this.waiting.delete(msg.id);
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

  /** Asks the engine to close, then waits (bounded) for the process to exit. */
  async close(timeoutMs = 10_000): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    this.call('close').catch(() => undefined);
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** The same deterministic pattern the peer fixtures use (one implementation: test/fixtures/pattern.cjs). */
export { pattern } from '../fixtures/pattern.cjs';
