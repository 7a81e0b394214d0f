/**
 * The bookkeeping every server process a test starts needs (etcd, redis-server, upstream's
 * mooncake_http_metadata_server):
 *
 * - `freePort()` for it to listen on, and `retryPortRace()` when another process took the port first;
 * - `track()`: SIGKILLed when the test worker exits, even by SIGKILL (`watchdog()`);
 * - `stopProcess()`: a bounded stop (SIGCONT first, so a paused process can handle the signal), and
 *   `controls()`: kill / stop / pause / resume for a server object;
 * - `OutputTail`: the last part of its output, for error messages;
 * - `waitServing()`: polls until it answers, failing early if it exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Kills `child` (SIGKILL) if this test process dies first, even by SIGKILL (a vitest worker killed on
 * a timeout never runs its 'exit' handlers): a detached shell polls both pids once a second.
 */
export function watchdog(child: ChildProcess): void {
  if (!child.pid) return;
  const dog = spawn(
    'sh',
    ['-c', 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -CONT "$2" 2>/dev/null; kill -9 "$2" 2>/dev/null', 'watchdog', String(process.pid), String(child.pid)],
    { detached: true, stdio: 'ignore' },
  );
  dog.unref();
}

const live = new Set<ChildProcess>();
let exitHook = false;

/** A watchdog for `child`, and a SIGKILL when this process exits normally with `child` still running. */
export function track(child: ChildProcess): void {
  watchdog(child);
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of live) {
        try {
          if (c.pid) process.kill(c.pid, 'SIGCONT');
          c.kill('SIGKILL');
        } catch {
          // gone
        }
      }
    });
  }
}

/** `signal` (SIGTERM), then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProcess(child: ChildProcess, graceMs = 5000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    if (child.pid) process.kill(child.pid, 'SIGCONT'); // a paused process cannot handle SIGTERM
  } catch {
    // gone
  }
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** What a test can do to a server process (`controls()` makes them). */
export interface ProcessControls {
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM, SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** SIGSTOP / SIGCONT: a server that accepts connections but never answers. */
  pause(): void;
  resume(): void;
}

/** Controls acting on whatever process `current()` returns at the time (a restart replaces it). */
export function controls(current: () => ChildProcess | undefined): ProcessControls {
  return {
    async kill() {
      const child = current();
      if (child) await stopProcess(child, 0, 'SIGKILL');
    },
    async stop(graceMs = 5000) {
      const child = current();
      if (child) await stopProcess(child, graceMs);
    },
    pause() {
      const pid = current()?.pid;
      if (pid) process.kill(pid, 'SIGSTOP');
    },
    resume() {
      const pid = current()?.pid;
      if (pid) process.kill(pid, 'SIGCONT');
    },
  };
}

/** The last `maxChars` of what the attached processes wrote on stdout and stderr. */
export class OutputTail {
  text = '';
  constructor(private readonly maxChars: number) {}

  attach(child: ChildProcess): void {
    const collect = (b: Buffer): void => {
      this.text = (this.text + b.toString('utf8')).slice(-this.maxChars);
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
  }
}

/**
 * Polls `ready()` every 100 ms until it is true; throws if `child` exits first or `timeoutMs` passes.
 * `what` and `where` name the server in those errors.
 */
export async function waitServing(child: ChildProcess | undefined, ready: () => Promise<boolean>, timeoutMs: number, what: string, where: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited early (code ${child?.exitCode}, signal ${child?.signalCode})`);
    }
    if (await ready()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not answer at ${where} within ${timeoutMs} ms`);
}

/**
 * Runs `attempt` (which picks free ports and starts a server) up to three times: again only when it
 * failed because another process took a port in between (the error, with the server's output, says so).
 */
export async function retryPortRace<T>(attempt: (index: number) => Promise<T>): Promise<T> {
  let lastError: unknown;
  for (let i = 0; i < 3; i++) {
    try {
      return await attempt(i);
    } catch (e) {
      lastError = e;
      if (!/address already in use|Errno 98/i.test((e as Error).message)) break;
    }
  }
  throw lastError;
}
