/**
 * Runs upstream's own transfer_engine_bench (from the wheel) with the same parameters, target and
 * initiator both upstream, against our embedded metadata server (which speaks upstream's protocol).
 */
import { spawn } from 'node:child_process';
import { MooncakeError } from '../errors';
import { createMetadataStore } from '../metadata/store';
import { segmentKey } from '../metadata/keys';
import { findUpstream, upstreamEnv } from '../tools/upstream-peer';
import type { RunResult } from './initiator';
import type { BenchOptions } from './options';

export type UpstreamMode = 'default' | 'pool';

let nameCounter = 0;

function uniqueName(): string {
  return `127.0.0.1:${20000 + ((process.pid * 7 + nameCounter++) % 9000)}`;
}

/** upstream's bench, or why it cannot run. */
export async function runUpstreamBench(o: BenchOptions, metadataUrl: string, mode: UpstreamMode, signal?: AbortSignal): Promise<RunResult> {
  const up = findUpstream();
  if ('skipReason' in up) throw new MooncakeError('LIBRARY_NOT_FOUND', up.skipReason);
  signal?.throwIfAborted();
  const env = upstreamEnv(mode === 'pool' ? { MC_TCP_ENABLE_CONNECTION_POOL: '1' } : { MC_TCP_ENABLE_CONNECTION_POOL: '0' });
  const targetName = uniqueName();
  const common = ['--protocol=tcp', `--metadata_server=${metadataUrl}`, `--buffer_size=${o.bufferSize}`];
  const target = spawn(up.bench, ['--mode=target', `--local_server_name=${targetName}`, ...common], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let targetLog = '';
  target.stderr!.on('data', (d: Buffer) => { targetLog = (targetLog + d.toString()).slice(-4000); });
  const store = createMetadataStore(metadataUrl);
  try {
    // Wait for the target's descriptor to carry its buffer.
    const key = segmentKey(targetName);
    for (let i = 0; ; i++) {
      const d = await store.get(key).catch(() => undefined);
      if (d && d.includes('"addr"')) break;
      if (target.exitCode !== null || i > 300) throw new MooncakeError('TIMEOUT', `upstream bench target did not come up:\n${targetLog}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const args = [
      '--mode=initiator', `--local_server_name=${uniqueName()}`, `--segment_id=${targetName}`, ...common,
      `--operation=${o.operation}`, `--block_size=${o.blockSize}`, `--batch_size=${o.batchSize}`,
      `--threads=${o.concurrency}`, `--duration=${Math.max(1, Math.round(o.durationSec))}`,
    ];
    const init = spawn(up.bench, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    init.stderr!.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-65536); });
    const onAbort = (): void => {
      init.kill('SIGTERM');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const code = await new Promise<number | null>((resolve) => init.once('exit', (c) => resolve(c)));
    signal?.removeEventListener('abort', onAbort);
    signal?.throwIfAborted();
    const m = /Test completed: duration ([\d.]+), batch count (\d+), throughput ([\d.]+)/.exec(log);
    if (code !== 0 || !m) throw new MooncakeError('PROTOCOL_ERROR', `upstream bench initiator failed (exit ${code}):\n${log.slice(-2000)}`);
    const seconds = Number(m[1]);
    const batches = Number(m[2]);
    const bytes = batches * o.batchSize * o.blockSize;
    return {
      impl: `upstream ${up.version} (${mode === 'pool' ? 'connection pool' : 'default'}, ${o.concurrency} thr)`,
      operation: o.operation,
      blockSize: o.blockSize,
      batchSize: o.batchSize,
      concurrency: o.concurrency,
      seconds,
      bytes,
      batches,
      bandwidth: bytes / seconds,
      opsPerSec: (batches * o.batchSize) / seconds,
      latencyMs: { avg: batches ? (seconds * 1000 * o.concurrency) / batches : 0, p50: 0, p99: 0, max: 0 },
      cpuPercent: 0,
      errors: 0,
    };
  } finally {
    await store.close();
    if (target.exitCode === null) {
      target.kill('SIGTERM');
      const t = setTimeout(() => target.kill('SIGKILL'), 5000);
      await new Promise<void>((r) => (target.exitCode !== null ? r() : target.once('exit', () => r())));
      clearTimeout(t);
    }
  }
}
