/**
 * `mooncake-node proxy ...`: parses vllm-ascend's proxy flags (and ours), runs the proxy until SIGINT/SIGTERM,
 * then closes it (in-flight requests get --shutdown-grace-ms; a second signal cuts them).
 */
import { commandHelp, defineCommand } from '../cli/command';
import { PROXY_FLAGS, parseProxyArgs, proxyOptionsFromFlags } from './flags';
import type { ProxyLogLevel, ProxyLogger, ProxyOptions } from './options';
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
export async function runProxyCommand(argv: readonly string[], io: ProxyCommandIO = {}): Promise<void> {
  const parsed = parseProxyArgs(argv, io.env ?? process.env);
  if (parsed.help) {
    (io.stdout ?? process.stdout).write(PROXY_USAGE);
    return;
  }
  await serveProxy(parsed.options, parsed.logLevel, io);
}

async function serveProxy(options: ProxyOptions, logLevel: ProxyLogLevel | 'silent', io: ProxyCommandIO): Promise<void> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const log = lineLogger(logLevel, stderr);
  if (io.signal?.aborted === true) return;
  const proxy = createProxy({ ...options, log });
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
    if (io.signal?.aborted === true) onAbort(); // aborted while it started listening
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

export const proxyCommand = defineCommand({
  name: 'proxy',
  summary: 'OpenAI-compatible PD proxy (prefill, then decode)',
  description: [
    'Routes OpenAI-compatible requests as vllm-ascend\'s load_balance_proxy_server_example.py does: to a prefill',
    'instance (max_tokens=1, min_tokens=1, kv_transfer_params.do_remote_decode=true), then to a decode instance',
    'with the kv_transfer_params prefill returned. Runs until SIGINT or SIGTERM.',
  ].join('\n'),
  flags: PROXY_FLAGS,
  signals: 'own',
  examples: ['mooncake-node proxy --port 8000 --prefiller-hosts 10.0.0.1 10.0.0.2 --prefiller-ports 8100 8100 --decoder-hosts 10.0.0.3 --decoder-ports 8200'],
  async run(values, ctx) {
    const { logLevel, options } = proxyOptionsFromFlags(values, ctx.env);
    await serveProxy(options, logLevel, { stdout: ctx.stdout, stderr: ctx.stderr });
  },
});

/** The `--help` text of `mooncake-node proxy`. */
export const PROXY_USAGE = commandHelp(proxyCommand);
