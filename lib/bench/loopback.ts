import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { TransferEngine } from '../engine';
import { MooncakeError } from '../errors';
import { MetadataServer } from '../metadata/server';
import { benchBuffer, benchEngineOptions } from './engine';
import { runInitiator, type RunResult } from './initiator';
import type { BenchOptions } from './options';

export interface TargetProcess {
  segment: string;
  child: ChildProcess;
  /** Ends the target and returns its CPU use. */
  stop(): Promise<{ cpuPercent?: number; bytesReceived?: number; bytesSent?: number; requestsServed?: number }>;
}

/** Starts `mooncake-node bench --mode target` as a child process and waits until it is ready. */
export async function spawnTarget(o: BenchOptions, metadataServer: string): Promise<TargetProcess> {
  const cli = path.join(__dirname, '..', 'cli.js');
  const args = [cli, 'bench', '--mode', 'target', '--json', '--metadata-server', metadataServer, '--buffer-size', String(o.bufferSize)];
  if (o.managed) args.push('--managed');
  if (o.ioThreads) args.push('--io-threads', String(o.ioThreads));
  if (o.connectionsPerPeer) args.push('--connections', String(o.connectionsPerPeer));
  if (!o.sameHost) args.push('--no-same-host');
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout! });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  rl.on('line', (l) => { lines.push(l); wake?.(); });
  const nextLine = (timeoutMs: number) => new Promise<string>((resolve, reject) => {
    const take = () => { if (lines.length) { clearTimeout(t); wake = undefined; resolve(lines.shift()!); } };
    const t = setTimeout(() => reject(new MooncakeError('TIMEOUT', 'the bench target did not answer')), timeoutMs);
    child.once('exit', (code) => { clearTimeout(t); if (!lines.length) reject(new MooncakeError('CLOSED', `the bench target exited (${code})`)); else take(); });
    wake = take;
    take();
  });
  const ready = JSON.parse(await nextLine(30_000)) as { ready: boolean; segment: string };
  return {
    segment: ready.segment,
    child,
    async stop() {
      child.stdin!.end();
      try {
        const done = JSON.parse(await nextLine(15_000)) as { cpuPercent?: number; bytesReceived?: number; bytesSent?: number; requestsServed?: number };
        return done;
      } catch {
        child.kill('SIGKILL');
        return {};
      } finally {
        await new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
      }
    },
  };
}

/** Loopback: embedded metadata server + target process + initiator here. */
export async function runLoopback(o: BenchOptions, onProgress?: (bytes: number, seconds: number) => void): Promise<RunResult> {
  let meta: MetadataServer | undefined;
  let url = o.metadataServer;
  if (!url) {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen(0, '127.0.0.1')).url;
  }
  const target = await spawnTarget(o, url);
  let engine: TransferEngine | undefined;
  try {
    engine = await TransferEngine.create({
      metadataServer: url,
      bindAddress: '127.0.0.1',
      advertiseAddress: '127.0.0.1',
      ...benchEngineOptions(o),
    });
    const region = await benchBuffer(engine, o);
    const segment = await engine.openSegment(target.segment);
    const result = await runInitiator(engine, segment, region, o, onProgress);
    await engine.close();
    engine = undefined;
    const t = await target.stop();
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
    await engine?.close();
    if (target.child.exitCode === null) await target.stop();
    await meta?.close();
  }
}
