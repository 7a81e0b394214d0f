import { performance } from 'node:perf_hooks';
import type { TransferEngine } from '../engine';
import type { MemoryRegion } from '../engine/memory';
import type { Segment } from '../engine/segment';
import type { BenchOptions } from './options';
import type { RunResult } from './report';
import { CpuMeter, HealthMeter, Samples } from './stats';

export type { RunResult } from './report';

/**
 * Keeps `concurrency` batches in flight for `durationSec`. Batch slot t, request i uses offset
 * block*(i*concurrency + t) on both sides, as upstream's transfer_engine_bench does. When `signal` aborts,
 * no new batch starts and the run rejects with its reason once the batches in flight are done.
 */
export async function runInitiator(
  engine: TransferEngine,
  segment: Segment,
  region: MemoryRegion,
  o: BenchOptions,
  signal: AbortSignal,
  onProgress?: (bytes: number, seconds: number) => void,
): Promise<RunResult> {
  const { blockSize, batchSize, concurrency } = o;
  const batches = Array.from({ length: concurrency }, (_, t) =>
    engine.prepareBatch(
      segment,
      o.operation,
      Array.from({ length: batchSize }, (_, i) => {
        const off = blockSize * (i * concurrency + t);
        return { local: region, localOffset: off, remote: segment.address(0, off, blockSize), length: blockSize };
      }),
    ),
  );
  const lat = new Samples();
  const health = new HealthMeter();
  const cpu = new CpuMeter();
  let bytes = 0;
  let count = 0;
  let errors = 0;
  const t0 = performance.now();
  const deadline = t0 + o.durationSec * 1000;
  let lastReport = t0;
  const slot = async (t: number) => {
    const batch = batches[t];
    while (performance.now() < deadline && !signal.aborted && errors === 0) {
      const s = performance.now();
      try {
        await engine.submitPrepared(batch);
      } catch (err) {
        errors++;
        throw err;
      }
      const e = performance.now();
      lat.push(e - s);
      bytes += batch.bytes;
      count++;
      if (onProgress && e - lastReport >= 1000) {
        lastReport = e;
        onProgress(bytes, (e - t0) / 1000);
      }
    }
  };
  await Promise.all(batches.map((_, t) => slot(t)));
  signal.throwIfAborted();
  const seconds = (performance.now() - t0) / 1000;
  const h = health.stop();
  const sameHostBytes = engine.stats().sameHostBytes ?? 0;
  const viaMemcpy = sameHostBytes > 0;
  return {
    impl: viaMemcpy ? 'mooncake-node (same-host memcpy)' : 'mooncake-node (tcp)',
    operation: o.operation,
    blockSize,
    batchSize,
    concurrency,
    seconds,
    bytes,
    batches: count,
    bandwidth: bytes / seconds,
    opsPerSec: (count * batchSize) / seconds,
    latencyMs: lat.summary(),
    cpuPercent: cpu.percent(),
    loopDelayP99Ms: h.loopDelayP99Ms,
    rss: { startMiB: h.rssStartMiB, endMiB: h.rssEndMiB, maxMiB: h.rssMaxMiB, samples: h.rssSamples },
    errors,
    sameHostBytes,
  };
}
