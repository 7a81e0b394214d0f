/** Resource counts of a process from /proc, and bounded polling. */
import * as fs from 'node:fs';

export interface ProcSample {
  fds: number;
  threads: number;
  /** Resident set size in bytes. */
  rss: number;
}

export function procSample(pid: number): ProcSample {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  return { fds: fs.readdirSync(`/proc/${pid}/fd`).length, threads: fs.readdirSync(`/proc/${pid}/task`).length, rss };
}

/** User + system CPU seconds the process has used. */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every `everyMs` until it is truthy or `timeoutMs` passes; returns the last value. */
export async function until<T>(cond: () => T | Promise<T>, timeoutMs: number, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let v = await cond();
  while (!v && Date.now() < deadline) {
    await sleep(everyMs);
    v = await cond();
  }
  return v;
}

export const MiB = 1 << 20;

export function fmtBytes(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

/** A deterministic PRNG (xorshift32) so fault rounds can be replayed from a printed seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}
