/**
 * Proxy load benchmark on loopback: the same request load (autocannon) goes straight to a decode stand-in and
 * through the proxy (prefill stand-in, then decode stand-in), in the same run, and the latency the proxy adds
 * is the difference of the percentiles. A benchmark, not a test: numbers depend on the machine.
 *
 * Latencies are taken from autocannon's per-response hrtime measurements (sub-millisecond), not from its
 * integer-millisecond histogram.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { MooncakeError } from '../errors';
import { requireOptional } from '../util/optional';
import { intOption } from '../util/options';
import { quantile } from '../util/stats';
import { startBenchWorker, type BenchWorkerConfig, type BenchWorkerReady } from './bench-worker';

export interface ProxyBenchOptions {
  /** Concurrent client connections (default 16). */
  connections?: number;
  /** Seconds each measured run lasts (default 10). */
  durationSec?: number;
  /** Seconds of warm-up load on each target before measuring (default 2). */
  warmupSec?: number;
  /** Measured runs per target, alternating direct and proxied (default 2). */
  rounds?: number;
  /** Ask for an SSE stream instead of one JSON answer (default false). */
  stream?: boolean;
  /** Tokens the decode stand-in generates per request (default 16). */
  maxTokens?: number;
  /** Prompt size in bytes (default 1024). */
  promptBytes?: number;
  /**
   * Run the stand-ins and the proxy in child processes (default: true when running compiled JavaScript; the
   * TypeScript sources cannot be forked without a loader, so they run in-process).
   */
  isolate?: boolean;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** Latencies in milliseconds. */
export interface LatencySummary {
  requests: number;
  errors: number;
  non2xx: number;
  /** Completed requests per second. */
  rps: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface ProxyBenchResult {
  connections: number;
  durationSec: number;
  rounds: number;
  stream: boolean;
  maxTokens: number;
  promptBytes: number;
  isolated: boolean;
  node: string;
  cpus: number;
  /** 1-minute load average before and after the measured runs: other work on the machine skews the numbers. */
  loadavg: { before: number; after: number };
  /** Client → decode stand-in. */
  direct: LatencySummary;
  /** Client → proxy → prefill stand-in, then → decode stand-in. */
  proxied: LatencySummary;
  /** proxied − direct, in milliseconds: what the proxy hop plus the prefill round trip add. */
  added: { mean: number; p50: number; p99: number };
}

// autocannon ships no types; this is the part of its API the bench uses.
interface AutocannonResult {
  errors: number;
  timeouts: number;
  non2xx: number;
  duration: number;
  '2xx': number;
}
interface AutocannonInstance {
  on(event: 'response', fn: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): void;
}
type Autocannon = (opts: Record<string, unknown>, cb: (err: Error | null, result: AutocannonResult) => void) => AutocannonInstance;

function loadAutocannon(): Autocannon {
  // Loaded lazily: only the benchmark needs it, and an installed mooncake-node does not pull it in.
  return requireOptional<Autocannon>('autocannon', 'mooncake-node proxy-bench (the load generator)');
}

interface Run {
  latencies: number[];
  errors: number;
  non2xx: number;
  completed: number;
  seconds: number;
}

function load(url: string, body: string, connections: number, durationSec: number): Promise<Run> {
  const autocannon = loadAutocannon();
  return new Promise((resolve, reject) => {
    const latencies: number[] = [];
    const inst = autocannon(
      { url, method: 'POST', headers: { 'content-type': 'application/json' }, body, connections, duration: durationSec, timeout: 30 },
      (err, result) => {
        if (err !== null) {
          reject(new MooncakeError('CONNECT_FAILED', `autocannon failed on ${url}: ${err.message}`, { cause: err }));
          return;
        }
        resolve({ latencies, errors: result.errors + result.timeouts, non2xx: result.non2xx, completed: result['2xx'], seconds: result.duration });
      },
    );
    inst.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
    });
  });
}

const r3 = (n: number): number => Math.round(n * 1000) / 1000;
const r2 = (n: number): number => Math.round(n * 100) / 100;

function summarize(runs: readonly Run[]): LatencySummary {
  const all = runs.flatMap((r) => r.latencies).sort((a, b) => a - b);
  const seconds = runs.reduce((s, r) => s + r.seconds, 0);
  const completed = runs.reduce((s, r) => s + r.completed, 0);
  const mean = all.length === 0 ? NaN : all.reduce((s, v) => s + v, 0) / all.length;
  return {
    requests: completed,
    errors: runs.reduce((s, r) => s + r.errors, 0),
    non2xx: runs.reduce((s, r) => s + r.non2xx, 0),
    rps: seconds > 0 ? Math.round(completed / seconds) : 0,
    mean: r3(mean),
    p50: r3(quantile(all, 0.5)),
    p90: r3(quantile(all, 0.9)),
    p99: r3(quantile(all, 0.99)),
    max: r3(all.length === 0 ? NaN : all[all.length - 1]),
  };
}

interface Target {
  ready: BenchWorkerReady;
  close(): Promise<void>;
}

function forkWorker(cfg: BenchWorkerConfig): Promise<Target> {
  const script = path.join(__dirname, 'bench-worker.js');
  return new Promise((resolve, reject) => {
    const child: ChildProcess = fork(script, [JSON.stringify(cfg)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const close = (): Promise<void> =>
      new Promise<void>((res) => {
        if (child.exitCode !== null || child.signalCode !== null) return res();
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(t);
          res();
        });
        if (child.connected) child.send('close');
        else child.kill('SIGTERM');
      });
    child.once('message', (m) => resolve({ ready: m as BenchWorkerReady, close }));
    child.once('error', reject);
    child.once('exit', (code) => reject(new MooncakeError('CONNECT_FAILED', `bench worker ${cfg.kind} exited with code ${String(code)} before it was ready`)));
  });
}

async function startTarget(cfg: BenchWorkerConfig, isolate: boolean): Promise<Target> {
  if (isolate) return forkWorker(cfg);
  const w = await startBenchWorker(cfg);
  return { ready: w.ready, close: w.close };
}

function positiveInt(name: string, v: number | undefined, fallback: number): number {
  return intOption(name, v) ?? fallback;
}

/** Runs the benchmark once and returns the numbers. */
export async function runProxyBench(opts: ProxyBenchOptions = {}): Promise<ProxyBenchResult> {
  const connections = positiveInt('connections', opts.connections, 16);
  const durationSec = positiveInt('durationSec', opts.durationSec, 10);
  const rounds = positiveInt('rounds', opts.rounds, 2);
  const maxTokens = positiveInt('maxTokens', opts.maxTokens, 16);
  const promptBytes = positiveInt('promptBytes', opts.promptBytes, 1024);
  const warmupSec = opts.warmupSec ?? 2;
  if (!Number.isInteger(warmupSec) || warmupSec < 0) throw new MooncakeError('INVALID_CONFIG', `warmupSec=${String(warmupSec)}: expected an integer >= 0`);
  const stream = opts.stream ?? false;
  const compiled = __filename.endsWith('.js');
  const isolate = (opts.isolate ?? compiled) && compiled;
  const log = opts.log ?? ((): void => {});
  loadAutocannon();

  const body = JSON.stringify({ model: 'stand-in-model', prompt: 'x'.repeat(promptBytes), max_tokens: maxTokens, stream });
  const backends = await startTarget({ kind: 'stand-ins', defaultMaxTokens: maxTokens }, isolate);
  let proxy: Target | undefined;
  try {
    if (backends.ready.kind !== 'stand-ins') throw new MooncakeError('PROTOCOL_ERROR', 'bench worker answered the wrong ready message');
    const { prefill, decode } = backends.ready;
    proxy = await startTarget({ kind: 'proxy', prefill, decode }, isolate);
    if (proxy.ready.kind !== 'proxy') throw new MooncakeError('PROTOCOL_ERROR', 'bench worker answered the wrong ready message');
    const directUrl = `${decode}/v1/completions`;
    const proxiedUrl = `${proxy.ready.url}/v1/completions`;
    log(`stand-ins: prefill ${prefill}, decode ${decode}; proxy ${proxy.ready.url}; ${isolate ? 'separate processes' : 'one process'}`);
    if (warmupSec > 0) {
      log(`warm-up ${warmupSec}s on each target`);
      await load(directUrl, body, connections, warmupSec);
      await load(proxiedUrl, body, connections, warmupSec);
    }
    const loadBefore = os.loadavg()[0];
    const direct: Run[] = [];
    const proxied: Run[] = [];
    for (let r = 0; r < rounds; r++) {
      log(`round ${r + 1}/${rounds}: direct to decode, ${connections} connections, ${durationSec}s`);
      direct.push(await load(directUrl, body, connections, durationSec));
      log(`round ${r + 1}/${rounds}: through the proxy, ${connections} connections, ${durationSec}s`);
      proxied.push(await load(proxiedUrl, body, connections, durationSec));
    }
    const d = summarize(direct);
    const p = summarize(proxied);
    return {
      connections,
      durationSec,
      rounds,
      stream,
      maxTokens,
      promptBytes,
      isolated: isolate,
      node: process.version,
      cpus: os.cpus().length,
      loadavg: { before: r2(loadBefore), after: r2(os.loadavg()[0]) },
      direct: d,
      proxied: p,
      added: { mean: r3(p.mean - d.mean), p50: r3(p.p50 - d.p50), p99: r3(p.p99 - d.p99) },
    };
  } finally {
    await proxy?.close();
    await backends.close();
  }
}

/** Formats results as a Markdown table. */
export function formatProxyBench(results: readonly ProxyBenchResult[]): string {
  const lines = [
    '| connections | mode | target | req/s | p50 ms | p90 ms | p99 ms | mean ms | errors/non-2xx |',
    '|---:|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const mode = r.stream ? `SSE, ${r.maxTokens} tokens` : `JSON, ${r.maxTokens} tokens`;
    for (const [name, s] of [['direct → decode', r.direct], ['proxy → prefill + decode', r.proxied]] as const) {
      lines.push(`| ${r.connections} | ${mode} | ${name} | ${s.rps} | ${s.p50} | ${s.p90} | ${s.p99} | ${s.mean} | ${s.errors}/${s.non2xx} |`);
    }
    lines.push(`| ${r.connections} | ${mode} | **added by proxy** | | **${r.added.p50}** | | **${r.added.p99}** | **${r.added.mean}** | |`);
  }
  const first = results[0];
  if (first !== undefined) {
    const loads = results.map((r) => `${r.loadavg.before}→${r.loadavg.after}`).join(', ');
    lines.push('', `Node ${first.node}, ${first.cpus} CPUs, ${first.isolated ? 'stand-ins and proxy in separate processes' : 'one process'}, ${first.rounds} × ${first.durationSec} s per target; 1-min load average ${loads}.`);
  }
  return lines.join('\n') + '\n';
}
