/**
 * The references `bench --compare` holds mooncake-node against, measured in the same run on the same
 * buffers: raw TCP sockets with no protocol (the ceiling of a TCP transport), and one core's memcpy.
 *
 * Loopback TCP copies every byte twice, sender into the kernel and kernel out to the receiver, and on a
 * 2-core machine each side's copy runs on its own core: no TCP transport on loopback can beat one core's
 * memcpy of the same bytes, which is why memcpy is measured too (the physical limit). The raw sockets come
 * in two kinds: bulk calls (8 MiB per send/recv), and the best of a short scan over call sizes and stream
 * counts (1, 2 and 4), since smaller calls often beat bulk ones (the bytes the sender copied are still in the cache
 * when the receiver copies them out), which is what a pipelining engine exploits too.
 */
import { loadNative } from '../engine/native';
import type { RunResult } from './initiator';
import type { BenchOptions } from './options';
import { formatBytes } from './report';

/** One reference run: `streams` raw TCP streams with `ioSize`-byte calls (0: bulk), or memcpy (streams 0). */
export async function rawReference(blockSize: number, streams: number, seconds: number, o: BenchOptions, ioSize = 0, label?: string): Promise<RunResult> {
  // The same working set as the bench (o.bufferSize on each side), not one cache-hot block.
  const r = await loadNative().rawTcpBench(streams, blockSize, o.bufferSize, seconds, ioSize);
  const impl = label ?? (streams === 0 ? 'memcpy, 1 thread (loopback ceiling)' : `raw TCP bulk, ${streams} stream${streams === 1 ? '' : 's'}`);
  return {
    impl,
    operation: o.operation, blockSize, batchSize: 1, concurrency: streams, seconds: r.seconds, bytes: r.bytes, batches: 0,
    bandwidth: r.bytes / r.seconds, opsPerSec: r.bytes / r.seconds / blockSize, latencyMs: { avg: 0, p50: 0, p99: 0, max: 0 }, cpuPercent: 0, errors: 0,
  };
}

/** Call sizes and stream counts the scan tries. */
const SCAN_IO = [64 << 10, 256 << 10, 1 << 20];
const SCAN_STREAMS = [1, 2, 4];
const SCAN_SECONDS = 0.3;

/** The raw TCP references of one compare run: bulk 1 and N streams, and the best scanned configuration. */
export async function rawReferences(o: BenchOptions): Promise<RunResult[]> {
  const streams = Math.max(2, o.connectionsPerPeer ?? 2);
  const out = [await rawReference(o.blockSize, 1, o.durationSec, o), await rawReference(o.blockSize, streams, o.durationSec, o)];
  let best = { io: 0, streams: 0, bw: 0 };
  for (const io of SCAN_IO) {
    for (const n of SCAN_STREAMS) {
      const r = await rawReference(o.blockSize, n, SCAN_SECONDS, o, io);
      if (r.bandwidth > best.bw) best = { io, streams: n, bw: r.bandwidth };
    }
  }
  out.push(await rawReference(o.blockSize, best.streams, o.durationSec, o, best.io, `raw TCP ${formatBytes(best.io)} calls, ${best.streams} stream${best.streams === 1 ? '' : 's'} (best of a scan)`));
  return out;
}
