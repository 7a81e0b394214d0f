/** Runs a connection-flood fixture (fixtures/flood.cjs, fixtures/idle-flood.cjs) in its own process. */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';

export const FLOOD = path.join(__dirname, '../fixtures/flood.cjs');
export const IDLE_FLOOD = path.join(__dirname, '../fixtures/idle-flood.cjs');

const HAS_PRLIMIT = (() => {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
/** Root with prlimit (util-linux): fd limits of the flood and target processes can be set. */
export const IS_ROOT = process.getuid?.() === 0 && HAS_PRLIMIT;
export const NO_FD_LIMITS_REASON = HAS_PRLIMIT ? 'not root' : 'no prlimit';

export interface Flood {
  child: ChildProcess;
  /** The fixture's first line (its state once every connection was attempted). */
  first: Promise<Record<string, unknown>>;
  /** Tells the fixture to reset its sockets and exit; resolves with its last line, if any. */
  close: () => Promise<Record<string, unknown> | undefined>;
}

/** Spawns `fixture` with `cfg` (under `prlimit --nofile` when root). */
export function spawnFlood(fixture: string, cfg: Record<string, unknown>, nofile: number): Flood {
  const base = [process.execPath, fixture, JSON.stringify(cfg)];
  const argv = IS_ROOT ? ['prlimit', `--nofile=${nofile}:${nofile}`, ...base] : base;
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout! });
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  rl.on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else lines.push(l);
  });
  const next = (ms: number) =>
    new Promise<string>((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) return resolve(l);
      const t = setTimeout(() => reject(new Error(`flood gave no answer within ${ms} ms`)), ms);
      waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  return {
    child,
    first: next(60_000).then((l) => JSON.parse(l) as Record<string, unknown>),
    close: async () => {
      if (child.exitCode !== null) return undefined;
      const exited = new Promise((r) => child.once('exit', r));
      const last = next(10_000).then((l) => JSON.parse(l) as Record<string, unknown>, () => undefined);
      child.stdin!.write('close\n');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      return last;
    },
  };
}
