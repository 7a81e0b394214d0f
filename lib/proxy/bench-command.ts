/** `mooncake-node proxy-bench`: the proxy's added latency on loopback, as a Markdown table or JSON. */
import { commandHelp, defineCommand } from '../cli/command';
import { flagError, parseFlags, type FlagValues } from '../cli/flags';
import { formatProxyBench, runProxyBench, type ProxyBenchResult } from './bench';

const FLAGS = {
  connections: { type: 'list', arg: 'N', default: ['1', '16'], help: 'concurrent connections, one run per value' },
  duration: { type: 'int', min: 1, max: 3600, arg: 'S', default: 10, help: 'seconds per measured run' },
  warmup: { type: 'int', min: 0, max: 3600, arg: 'S', default: 2, help: 'warm-up seconds per target' },
  rounds: { type: 'int', min: 1, max: 100, default: 2, help: 'measured runs per target, alternating' },
  stream: { type: 'boolean', help: 'request SSE streams instead of JSON' },
  'max-tokens': { type: 'int', min: 1, max: 100000, default: 16, help: 'tokens generated per request' },
  'prompt-bytes': { type: 'int', min: 0, max: 1 << 24, default: 1024, help: 'prompt size' },
  'in-process': { type: 'boolean', help: 'run the stand-ins and the proxy in this process' },
  json: { type: 'boolean', help: 'print the results as JSON' },
} as const;

export interface ProxyBenchCommandIO {
  stdout?: NodeJS.WritableStream;
  /** Progress lines (default process.stderr). */
  stderr?: NodeJS.WritableStream;
  /** Receives the results once every run is done. */
  onResults?: (results: ProxyBenchResult[]) => void;
}

async function runBench(v: FlagValues<typeof FLAGS>, io: ProxyBenchCommandIO): Promise<void> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const conns = (v.connections ?? []).map((c) => {
    if (!/^\d+$/.test(c) || Number(c) < 1 || Number(c) > 10_000) throw flagError('--connections', c, 'expected integers from 1 to 10000');
    return Number(c);
  });
  const results: ProxyBenchResult[] = [];
  for (const connections of conns) {
    results.push(
      await runProxyBench({
        connections,
        durationSec: v.duration,
        warmupSec: v.warmup,
        rounds: v.rounds,
        stream: v.stream === true,
        maxTokens: v['max-tokens'],
        promptBytes: v['prompt-bytes'],
        isolate: v['in-process'] === true ? false : undefined,
        log: (line) => stderr.write(`${line}\n`),
      }),
    );
  }
  stdout.write(v.json === true ? JSON.stringify(results, null, 2) + '\n' : formatProxyBench(results));
  io.onResults?.(results);
}

export const proxyBenchCommand = defineCommand({
  name: 'proxy-bench',
  summary: 'latency the proxy adds, on loopback',
  description: [
    'Starts stand-in prefill and decode servers and the proxy on loopback, loads the decode stand-in directly and',
    'then through the proxy with autocannon (an optional package: npm install autocannon), and prints p50/p99',
    'latency and what the proxy adds.',
  ].join('\n'),
  flags: FLAGS,
  run: (v, ctx) => runBench(v, { stdout: ctx.stdout, stderr: ctx.stderr }),
});

/** The `--help` text of `mooncake-node proxy-bench`. */
export const PROXY_BENCH_USAGE = commandHelp(proxyBenchCommand);

/** `mooncake-node proxy-bench ...` in this process. */
export async function runProxyBenchCommand(argv: readonly string[], io: ProxyBenchCommandIO = {}): Promise<void> {
  const { values } = parseFlags({ ...FLAGS, help: { type: 'boolean', short: 'h', help: '' } }, argv, { command: 'proxy-bench' });
  if (values.help === true) {
    (io.stdout ?? process.stdout).write(PROXY_BENCH_USAGE);
    return;
  }
  const { help: _help, ...rest } = values;
  await runBench(rest, io);
}
