/** Spawns test/fixtures/kv-group.cjs (a group of KV ranks in one process) and talks to it. */
import { type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { KvLayoutSpec, KvParallelSize, KvRankOptions } from '../../lib/kv';
import { FixtureProcess, type FixtureReply } from '../helpers/fixture-process';

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
  /** The failure-ledger stages of the outcome's records (empty when ok). */
  stages: string[];
  checkedBytes?: number;
  mismatches?: number;
}

export class KvGroup extends FixtureProcess {
  readonly events: GroupEvent[] = [];
  private readonly eventWaiters: { match: (e: GroupEvent) => boolean; resolve: (e: GroupEvent) => void }[] = [];

  private constructor(child: ChildProcess, readonly keys: string[]) {
    super(child, 'group');
  }

  static async spawn(cfg: GroupConfig, timeoutMs = 30_000): Promise<KvGroup> {
    const { child, lines, hello } = await FixtureProcess.startFixture(path.join(__dirname, '../fixtures/kv-group.cjs'), cfg, 'group', timeoutMs);
    const g = new KvGroup(child, (hello.keys as string[] | undefined) ?? []);
    lines.on('line', (l) => g.onLine(l));
    return g;
  }

  /** A reply, or an event (`{ event, ... }`) the fixture sent on its own. */
  private onLine(line: string): void {
    const msg = JSON.parse(line) as FixtureReply & { event?: string };
    if (msg.event !== undefined) {
      const e = msg as unknown as GroupEvent;
      this.events.push(e);
      for (let i = this.eventWaiters.length - 1; i >= 0; i--) {
        if (this.eventWaiters[i].match(e)) this.eventWaiters.splice(i, 1)[0].resolve(e);
      }
      return;
    }
    this.settle(msg);
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
  override async close(timeoutMs = 15_000): Promise<number | null> {
    return super.close(timeoutMs);
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
