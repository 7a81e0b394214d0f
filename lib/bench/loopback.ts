import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { TransferEngine } from '../engine';
import { MooncakeError, type ErrorCode } from '../errors';
import { MetadataServer } from '../metadata/server';
import { benchBuffer, benchEngineOptions } from './engine';
import { runInitiator, type RunResult } from './initiator';
import type { BenchOptions } from './options';

export interface TargetStats {
  cpuPercent?: number;
  bytesReceived?: number;
  bytesSent?: number;
  requestsServed?: number;
}

export interface TargetProcess {
  segment: string;
  child: ChildProcess;
  /** Ends the target (closing its stdin) and returns its counters; kills it if it does not end in 15 s. */
  stop(): Promise<TargetStats>;
}

/** How long a target may take to register its buffer and publish its segment. */
const READY_TIMEOUT_MS = 30_000;

/** The target's own coded error line (`mooncake-node: [CODE] message`), turned back into an error. */
function targetFailure(stderrTail: string, exit: number | null, signal: NodeJS.Signals | null): MooncakeError {
  const lines = stderrTail.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  for (let i = lines.length - 1; i >= 0; i--) {
    const m = /^mooncake-node: \[([A-Z_]+)\] (.*)$/.exec(lines[i]);
    if (m !== null) return new MooncakeError(m[1] as ErrorCode, `the bench target failed: ${m[2]}`, { details: { exit, signal } });
  }
  const how = signal !== null ? `was killed by ${signal}` : `exited with code ${exit}`;
  const last = lines.length > 0 ? `: ${lines[lines.length - 1]}` : '';
  return new MooncakeError('CLOSED', `the bench target ${how} before it was ready${last}`, { details: { exit, signal } });
}

/**
 * Starts `mooncake-node bench --mode target` as a child process and waits until it is ready. A target that
 * fails to start rejects with its own error code; `signal` aborts the wait (the child is then stopped).
 */
export async function spawnTarget(o: BenchOptions, metadataServer: string, signal?: AbortSignal): Promise<TargetProcess> {
  const args = ['bench', '--mode', 'target', '--json', '--until-stdin-closes', '--metadata-server', metadataServer, '--buffer-size', String(o.bufferSize)];
  if (o.managed) args.push('--managed');
  if (o.ioThreads) args.push('--io-threads', String(o.ioThreads));
  if (o.connectionsPerPeer) args.push('--connections', String(o.connectionsPerPeer));
  if (o.metricsMaxPeers !== undefined) args.push('--metrics-max-peers', String(o.metricsMaxPeers));
  if (!o.sameHost) args.push('--no-same-host');
  const child = await spawnBenchChild<{ ready?: boolean; segment?: string }>(args, signal);
  if (child.ready.ready !== true || typeof child.ready.segment !== 'string') {
    await child.stop();
    throw new MooncakeError('PROTOCOL_ERROR', 'the bench target announced something else than its segment');
  }
  return { segment: child.ready.segment, child: child.child, stop: child.stop };
}

/** A bench process this one started, ready (its first stdout line parsed as JSON). */
export interface BenchChild<T> {
  ready: T;
  child: ChildProcess;
  /** Ends it (closing its stdin) and returns its last stdout line as JSON ({} when none); kills it if it does not end in 15 s. */
  stop(): Promise<TargetStats & Record<string, unknown>>;
}

/**
 * Starts `mooncake-node <args>` (a bench target) as a child process and waits for its first stdout line,
 * a JSON object saying it is ready. A child that fails to start rejects with its own error code; `signal`
 * aborts the wait (the child is then stopped).
 */
export async function spawnBenchChild<T>(cliArgs: readonly string[], signal?: AbortSignal): Promise<BenchChild<T>> {
  const cli = path.join(__dirname, '..', 'cli.js');
  // The child's stderr is read, not inherited: its failure becomes this process's one error line.
  const child = spawn(process.execPath, [cli, ...cliArgs], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderrTail = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderrTail = (stderrTail + d.toString()).slice(-4096);
  });
  child.stdin!.on('error', () => {}); // a target that died: its closed stdin is not our failure
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const rl = readline.createInterface({ input: child.stdout! });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  rl.on('line', (l) => {
    lines.push(l);
    wake?.();
  });
  rl.on('close', () => wake?.());
  const nextLine = (timeoutMs: number, abort?: AbortSignal): Promise<string> =>
    new Promise<string>((resolve, reject) => {
      const finish = (fn: () => void): void => {
        clearTimeout(t);
        wake = undefined;
        abort?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = (): void => finish(() => reject(abort!.reason));
      const t = setTimeout(() => finish(() => reject(new MooncakeError('TIMEOUT', `the bench target did not answer within ${timeoutMs / 1000} s`))), timeoutMs);
      abort?.addEventListener('abort', onAbort, { once: true });
      wake = () => {
        if (lines.length > 0) finish(() => resolve(lines.shift()!));
        else if (child.exitCode !== null || child.signalCode !== null || child.stdout!.readableEnded) {
          // Lines still in the pipe arrive before 'close': decide once every stream has ended.
          void exited.then(() => {
            if (lines.length > 0) finish(() => resolve(lines.shift()!));
            else finish(() => reject(targetFailure(stderrTail, child.exitCode, child.signalCode)));
          });
        }
      };
      if (abort?.aborted === true) onAbort();
      else wake();
    });
  const stop = async (): Promise<TargetStats & Record<string, unknown>> => {
    child.stdin!.end();
    try {
      // The last line is the child's summary; anything before it was left unread.
      let last = await nextLine(15_000);
      while (lines.length > 0) last = lines.shift()!;
      return JSON.parse(last) as TargetStats & Record<string, unknown>;
    } catch {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return {};
    } finally {
      await exited;
    }
  };
  child.once('exit', () => wake?.());
  try {
    return { ready: JSON.parse(await nextLine(READY_TIMEOUT_MS, signal)) as T, child, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * Loopback: embedded metadata server + target process + initiator here. Whatever fails (the target, the
 * initiator, a signal), everything started here is stopped before the error comes out.
 */
export async function runLoopback(o: BenchOptions, signal: AbortSignal, onProgress?: (bytes: number, seconds: number) => void): Promise<RunResult> {
  let meta: MetadataServer | undefined;
  let target: TargetProcess | undefined;
  let engine: TransferEngine | undefined;
  try {
    let url = o.metadataServer;
    if (!url) {
      meta = new MetadataServer({ logger: null });
      url = (await meta.listen(0, '127.0.0.1')).url;
    }
    target = await spawnTarget(o, url, signal);
    engine = await TransferEngine.create({
      metadataServer: url,
      bindAddress: '127.0.0.1',
      advertiseAddress: '127.0.0.1',
      ...benchEngineOptions(o),
    });
    const region = await benchBuffer(engine, o);
    const segment = await engine.openSegment(target.segment);
    const result = await runInitiator(engine, segment, region, o, signal, onProgress);
    await engine.close();
    engine = undefined;
    const t = await target.stop();
    target = undefined;
    result.targetCpuPercent = t.cpuPercent;
    // Cross-check with what the target itself counted: every byte we claim must have crossed.
    const overTcp = o.operation === 'write' ? t.bytesReceived : t.bytesSent;
    if (overTcp !== undefined) result.targetBytes = overTcp;
    const moved = overTcp === undefined ? undefined : overTcp + (result.sameHostBytes ?? 0);
    if (moved !== undefined && moved < result.bytes) {
      throw new MooncakeError('PROTOCOL_ERROR', `the target saw ${overTcp} bytes over TCP and ${result.sameHostBytes ?? 0} were copied locally, but the initiator counted ${result.bytes}`);
    }
    return result;
  } finally {
    await engine?.close().catch(() => undefined);
    await target?.stop();
    await meta?.close();
  }
}
