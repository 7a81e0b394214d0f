/**
 * `mooncake-node proxy ...`: parses the seed's flags, runs the proxy until SIGINT/SIGTERM, then closes it
 * (in-flight requests get --shutdown-grace-ms; a second signal cuts them).
 */
import { PROXY_USAGE, parseProxyArgs, type ProxyLogLevel, type ProxyLogger } from './options';
import { createProxy, type PdProxy, type ProxyAddress } from './server';

export interface ProxyCommandIO {
  /** Where usage and the listening line go (default process.stdout). */
  stdout?: NodeJS.WritableStream;
  /** Where logs go (default process.stderr). */
  stderr?: NodeJS.WritableStream;
  /** Environment for defaults such as OPENAI_API_KEY (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Stops the proxy when aborted, like a signal does. */
  signal?: AbortSignal;
  /** Listen for SIGINT and SIGTERM (default true). */
  handleSignals?: boolean;
  /** Called once the proxy listens. */
  onListening?: (address: ProxyAddress, proxy: PdProxy) => void;
}

const LEVELS: Record<ProxyLogLevel | 'silent', number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

/** A line logger: `2025-01-01T00:00:00.000Z warn message {"fields":...}`. */
export function lineLogger(level: ProxyLogLevel | 'silent', out: NodeJS.WritableStream): ProxyLogger {
  const min = LEVELS[level];
  return (lvl, message, fields) => {
    if (LEVELS[lvl] < min) return;
    const extra = fields !== undefined && Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : '';
    out.write(`${new Date().toISOString()} ${lvl} ${message}${extra}\n`);
  };
}

/**
 * Runs the proxy command. Resolves after a clean shutdown; rejects with MooncakeError('INVALID_CONFIG') for bad
 * flags (the message names the flag and value) or when the port cannot be bound.
 */
export async function runProxyCommand(argv: string[], io: ProxyCommandIO = {}): Promise<void> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const parsed = parseProxyArgs(argv, io.env ?? process.env);
  if (parsed.help) {
    stdout.write(PROXY_USAGE);
    return;
  }
  const log = lineLogger(parsed.logLevel, stderr);
  if (io.signal?.aborted === true) return;
  const proxy = createProxy({ ...parsed.options, log });
  const address = await proxy.listen();
  stdout.write(`mooncake-node proxy listening on ${address.url}\n`);
  io.onListening?.(address, proxy);

  const handleSignals = io.handleSignals ?? true;
  let onSignal: ((sig: NodeJS.Signals) => void) | undefined;
  let onAbort: (() => void) | undefined;
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (why: string): void => {
      if (stopping) {
        log('warn', `${why} again: cutting in-flight requests`);
        void proxy.close({ graceMs: 0 });
        return;
      }
      stopping = true;
      log('info', `${why}: shutting down`);
      resolve();
    };
    onSignal = (sig) => stop(`received ${sig}`);
    onAbort = () => stop('aborted');
    if (handleSignals) {
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
    }
    io.signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await proxy.close();
  } finally {
    if (onSignal !== undefined) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (onAbort !== undefined) io.signal?.removeEventListener('abort', onAbort);
  }
}
