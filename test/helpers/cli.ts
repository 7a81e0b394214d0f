/**
 * Runs the built CLI (dist/cli.js) as a user would, with bounded time, and finds processes it left behind:
 * every run carries a unique marker in its environment, which child processes inherit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot } from './upstream';

export const cliPath = path.join(repoRoot, 'dist', 'cli.js');

export interface CliRun {
  child: ChildProcess;
  marker: string;
  /** Resolves when the process exits (or is killed at `timeoutMs`: then `timedOut`). */
  done: Promise<CliResult>;
  stdout(): string;
  stderr(): string;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** Starts `node <cli> ...args`; the process is SIGKILLed after `timeoutMs`. */
export function startCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cli?: string; cwd?: string } = {}): CliRun {
  const marker = `MOONCAKE_TEST_MARK=${randomUUID()}`;
  const [k, v] = marker.split('=');
  const child = spawn(process.execPath, [opts.cli ?? cliPath, ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: { ...process.env, ...opts.env, [k]: v },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const t0 = Date.now();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, opts.timeoutMs ?? 60_000);
  const done = new Promise<CliResult>((resolve) => {
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err, timedOut, ms: Date.now() - t0 });
    });
  });
  return { child, marker, done, stdout: () => out, stderr: () => err };
}

export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cli?: string; cwd?: string } = {}): Promise<CliResult> {
  return startCli(args, opts).done;
}

/** Pids of live processes whose environment holds `marker` (this user's processes only). */
export function processesWith(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const env = fs.readFileSync(`/proc/${entry}/environ`, 'latin1');
      if (env.split('\0').includes(marker)) {
        const stat = fs.readFileSync(`/proc/${entry}/stat`, 'latin1');
        if (!/\) Z /.test(stat)) pids.push(Number(entry)); // zombies are already gone in all but name
      }
    } catch {
      // gone, or not ours
    }
  }
  return pids;
}

/** Waits until no process carries `marker` (at most `ms`); returns those still alive. */
export async function leftovers(marker: string, ms = 5000): Promise<number[]> {
  const deadline = Date.now() + ms;
  let pids = processesWith(marker);
  while (pids.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    pids = processesWith(marker);
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return pids;
}

/** The lines of `stderr` that carry an error code (`mooncake-node: [CODE] ...`). */
export function codedLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /^mooncake-node: \[[A-Z_]+\] /.test(l));
}

/** Signs that an error escaped as a raw Node error or a stack trace. */
export function rawErrorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /^\s+at |^\w*Error[:\s]|EPIPE|node:internal|Uncaught|triggerUncaughtException/.test(l));
}
