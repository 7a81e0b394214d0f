import type { CommandContext } from '../cli/command';

/** Where a bench run writes, and what stops it. */
export interface BenchIO {
  /** A result line on stdout. */
  out(line: string): void;
  /** A progress or log line on stderr. */
  log(line: string): void;
  /** Live progress (`\r` updates) on a terminal; undefined when stderr is not one. */
  progress?: (text: string) => void;
  /** Aborted by SIGINT/SIGTERM: the run stops, cleans up and rejects with the reason. */
  signal: AbortSignal;
}

/**
 * Writes lines to a stream that may be a pipe whose reader went away (a parent process killed): EPIPE and
 * writes after it are dropped instead of becoming an uncaught 'error' event.
 */
export function lineWriter(stream: NodeJS.WritableStream): (line: string) => void {
  let broken = false;
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') broken = true;
    else throw e;
  });
  return (line) => {
    if (!broken) stream.write(line + '\n');
  };
}

export function benchIO(ctx: CommandContext, quiet: boolean): BenchIO {
  const log = lineWriter(ctx.stderr);
  const tty = (ctx.stderr as NodeJS.WriteStream).isTTY === true;
  return {
    out: lineWriter(ctx.stdout),
    log: quiet ? () => {} : log,
    progress: quiet || !tty ? undefined : (text) => ctx.stderr.write(`\r${text}   `),
    signal: ctx.signal,
  };
}

/**
 * Resolves when a target should stop: `signal` aborts (SIGINT/SIGTERM), or, when a loopback parent drives
 * this process (`untilStdinCloses`), its stdin closes. Call `release()` afterwards to let stdin go.
 */
export function untilStopped(signal: AbortSignal, untilStdinCloses: boolean): { stopped: Promise<void>; release(): void } {
  const stopped = new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
    if (untilStdinCloses) {
      process.stdin.resume();
      process.stdin.once('end', resolve);
      process.stdin.once('close', resolve);
      process.stdin.once('error', () => resolve());
    }
  });
  return { stopped, release: () => void (untilStdinCloses && process.stdin.pause()) };
}
