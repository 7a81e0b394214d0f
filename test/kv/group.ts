/** Spawns test/fixtures/kv-group.cjs (a group of KV ranks in one process) and talks to it. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { KvLayoutSpec, KvParallelSize, KvRankOptions } from '../../lib/kv';

export interface GroupConfig {
  role: 'producer' | 'consumer';
  engineId: string;
  metadataServer: string;
  prefill: KvParallelSize;
  decode: KvParallelSize;
  layout: KvLayoutSpec;
  totalKvHeads?: number;
  dpRanks?: number[];
  tpRanks?: number[];
  options?: Partial<Omit<KvRankOptions, 'engine' | 'caches'>>;
}

export interface GroupEvent {
  event: string;
  dp: number;
  tp: number;
  requestId: string;
  [k: string]: unknown;
}

/** What the fixture returns per rank for pull/push/awaitPush. */
export interface RankOutcome {
  tp: number;
  requestId: string;
  ok: boolean;
  blockIds: number[];
  failedBlockIds: number[];
  bytes: number;
  ranges: number;
  durationMs: number;
  peers: number;
  error?: string;
  checkedBytes?: number;
  mismatches?: number;
}

export class KvGroup {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  readonly events: GroupEvent[] = [];
  private readonly eventWaiters: { match: (e: GroupEvent) => boolean; resolve: (e: GroupEvent) => void }[] = [];
  readonly exited: Promise<number | null>;

  private constructor(readonly child: ChildProcess, readonly keys: string[]) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    child.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error('group process exited'));
      this.waiting.clear();
    });
  }

  static async spawn(cfg: GroupConfig, timeoutMs = 30_000): Promise<KvGroup> {
    const child = spawn(process.execPath, [path.join(__dirname, '../fixtures/kv-group.cjs'), JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const rl = readline.createInterface({ input: child.stdout! });
    const first = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error('group did not start'));
      }, timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`group exited (${code}) before it was ready`));
      });
      rl.once('line', (l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
    const hello = JSON.parse(first) as { ready: boolean; keys?: string[]; error?: { code: string; message: string } };
    if (!hello.ready) {
      child.kill('SIGKILL');
      throw Object.assign(new Error(hello.error?.message ?? 'group failed'), { code: hello.error?.code });
    }
    const g = new KvGroup(child, hello.keys ?? []);
    rl.on('line', (l) => g.onLine(l));
    return g;
  }

  private onLine(line: string): void {
    const msg = JSON.parse(line) as { id?: number; event?: string; ok?: boolean; result?: unknown; error?: { code: string; message: string } };
    if (msg.event !== undefined) {
      const e = msg as unknown as GroupEvent;
      this.events.push(e);
      for (let i = this.eventWaiters.length - 1; i >= 0; i--) {
        if (this.eventWaiters[i].match(e)) this.eventWaiters.splice(i, 1)[0].resolve(e);
      }
      return;
    }
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

  /** The first event (past or future) matching, within timeoutMs. */
  waitEvent(match: (e: GroupEvent) => boolean, timeoutMs = 20_000): Promise<GroupEvent> {
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('event did not come in time')), timeoutMs);
      this.eventWaiters.push({
        match,
        resolve: (e) => {
          clearTimeout(t);
          resolve(e);
        },
      });
    });
  }

  /** Closes the ranks (registry entries removed), then waits (bounded) for the process to exit. */
  async close(timeoutMs = 15_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.call('close').catch(() => undefined);
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }
}

/** Hands out distinct, deliberately scattered block ids (a free list with reuse), like a paged allocator. */
export class BlockPool {
  private free: number[];
  constructor(numBlocks: number, seed = 1) {
    // Runs of 1..6 consecutive ids, in shuffled order: allocations mix consecutive and scattered blocks.
    let x = seed >>> 0 || 1;
    const rnd = (n: number) => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return (x >>> 8) % n;
    };
    const runs: number[][] = [];
    for (let b = 0; b < numBlocks; ) {
      const len = Math.min(numBlocks - b, 1 + rnd(6));
      runs.push(Array.from({ length: len }, (_, i) => b + i));
      b += len;
    }
    for (let i = runs.length - 1; i > 0; i--) {
      const j = rnd(i + 1);
      [runs[i], runs[j]] = [runs[j], runs[i]];
    }
    this.free = runs.flat();
  }
  take(n: number): number[] {
    if (n > this.free.length) throw new Error('block pool exhausted');
    return this.free.splice(0, n);
  }
  give(ids: readonly number[]): void {
    this.free.push(...ids);
  }
}
