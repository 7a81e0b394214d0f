import { TransferEngine } from '../engine';
import { benchBuffer, benchEngineOptions } from './engine';
import { runInitiator, type RunResult } from './initiator';
import { runLoopback } from './loopback';
import { BENCH_USAGE, parseBenchArgs, type BenchOptions } from './options';
import { formatBytes, gbps, table } from './report';
import { runTarget } from './target';

const log = (s: string) => process.stderr.write(s + '\n');

function progress(o: BenchOptions): ((bytes: number, seconds: number) => void) | undefined {
  if (o.json || o.quiet || !process.stderr.isTTY) return undefined;
  return (bytes, seconds) => {
    process.stderr.write(`\r  ${seconds.toFixed(0)}s  ${gbps(bytes / seconds, o.reportUnit).toFixed(3)} ${o.reportUnit}/s   `);
  };
}

/** `mooncake-node bench ...` */
export async function runBenchCommand(argv: string[]): Promise<void> {
  const parsed = parseBenchArgs(argv);
  if (parsed === 'help') {
    console.log(BENCH_USAGE);
    return;
  }
  const o = parsed;
  if (o.mode === 'target') return runTarget(o, log);
  if (o.compare) {
    const { runCompare } = await import('./compare');
    return runCompare(o, log);
  }
  if (!o.json && !o.quiet) {
    log(`mooncake-node bench: ${o.mode}, ${o.operation} ${formatBytes(o.blockSize)} x ${o.batchSize} per batch, ${o.concurrency} in flight, ${o.durationSec}s`);
  }
  let result: RunResult;
  if (o.mode === 'loopback') {
    result = await runLoopback(o, progress(o));
  } else {
    const engine = await TransferEngine.create({
      metadataServer: o.metadataServer!,
      localServerName: o.localServerName,
      ...benchEngineOptions(o),
    });
    try {
      const region = await benchBuffer(engine, o);
      const segment = await engine.openSegment(o.segmentId!);
      result = await runInitiator(engine, segment, region, o, progress(o));
    } finally {
      await engine.close();
    }
  }
  if (progress(o)) process.stderr.write('\n');
  if (o.json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(table([result], o.reportUnit));
  console.log(`event-loop delay p99 ${result.loopDelayP99Ms?.toFixed(2)} ms; RSS ${result.rss?.startMiB} -> ${result.rss?.endMiB} MiB (max ${result.rss?.maxMiB})`);
  // upstream's report line, for scripts that grep it
  console.log(`Test completed: duration ${result.seconds.toFixed(2)}, batch count ${result.batches}, throughput ${gbps(result.bandwidth, o.reportUnit).toFixed(2)} ${o.reportUnit}/s`);
}
