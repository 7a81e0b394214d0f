/** `mooncake-node bench`: loopback (default), initiator or target, optionally against upstream's own bench. */
import { defineCommand, type CommandContext } from '../cli/command';
import { TransferEngine } from '../engine';
import { benchBuffer, benchEngineOptions } from './engine';
import { runInitiator, type RunResult } from './initiator';
import { benchIO, type BenchIO } from './io';
import { runLoopback } from './loopback';
import { BENCH_FLAGS, benchOptionsFromFlags, type BenchOptions } from './options';
import { formatBytes, rateIn, table } from './report';
import { runTarget } from './target';

function progress(o: BenchOptions, io: BenchIO): ((bytes: number, seconds: number) => void) | undefined {
  const show = io.progress;
  if (o.json || show === undefined) return undefined;
  return (bytes, seconds) => show(`  ${seconds.toFixed(0)}s  ${rateIn(bytes / seconds, o.reportUnit).toFixed(3)} ${o.reportUnit}/s`);
}

async function runInitiatorMode(o: BenchOptions, io: BenchIO, onProgress: ((bytes: number, seconds: number) => void) | undefined): Promise<RunResult> {
  const engine = await TransferEngine.create({ metadataServer: o.metadataServer!, localServerName: o.localServerName, ...benchEngineOptions(o) });
  try {
    const region = await benchBuffer(engine, o);
    const segment = await engine.openSegment(o.segmentId!);
    return await runInitiator(engine, segment, region, o, io.signal, onProgress);
  } finally {
    await engine.close();
  }
}

/** Runs the bench with parsed options. */
export async function runBench(o: BenchOptions, io: BenchIO, untilStdinCloses = false): Promise<void> {
  if (o.mode === 'target') return runTarget(o, io, untilStdinCloses);
  if (o.compare) {
    const { runCompare } = await import('./compare');
    return runCompare(o, io);
  }
  if (!o.json) {
    io.log(`mooncake-node bench: ${o.mode}, ${o.operation} ${formatBytes(o.blockSize)} x ${o.batchSize} per batch, ${o.concurrency} in flight, ${o.durationSec}s`);
  }
  const onProgress = progress(o, io);
  const result = o.mode === 'loopback' ? await runLoopback(o, io.signal, onProgress) : await runInitiatorMode(o, io, onProgress);
  if (onProgress !== undefined) io.progress?.('\n');
  if (o.json) {
    io.out(JSON.stringify(result));
    return;
  }
  io.out(table([result], o.reportUnit));
  io.out(`event-loop delay p99 ${result.loopDelayP99Ms?.toFixed(2)} ms; RSS ${result.rss?.startMiB} -> ${result.rss?.endMiB} MiB (max ${result.rss?.maxMiB})`);
  // upstream's report line, for scripts that grep it
  const rate = rateIn(result.bandwidth, o.reportUnit).toFixed(o.reportPrecision);
  io.out(`Test completed: duration ${result.seconds.toFixed(2)}, batch count ${result.batches}, throughput ${rate} ${o.reportUnit}/s`);
}

export const benchCommand = defineCommand({
  name: 'bench',
  summary: 'KV transfer benchmark (loopback by default: no set-up needed)',
  description: [
    "Moves blocks between two engines and reports GB/s, ops/s and batch latency. Flags follow upstream's",
    'transfer_engine_bench; its spellings (--block_size, --threads, --report_unit Gb, ...) work too.',
    'loopback (the default) starts an embedded metadata server and a target process itself.',
  ].join('\n'),
  flags: {
    ...BENCH_FLAGS,
    'until-stdin-closes': { type: 'boolean', hidden: true, help: 'target mode: also stop when stdin closes (the loopback parent sets it)' },
  },
  subcommands: [
    { name: 'bench kv', summary: "a prompt's KV on real model layouts: per-request time vs the bare engine and the real connector", load: async () => (await import('./kv/cli')).benchKvCommand },
  ],
  examples: [
    'mooncake-node bench --block-size 1M --batch-size 32 --threads 4 --duration 10',
    'mooncake-node bench --mode target --metadata-server http://10.0.0.1:8080/metadata --local-server-name 10.0.0.2:12345',
    'mooncake-node bench --mode initiator --metadata_server=http://10.0.0.1:8080/metadata --segment_id=10.0.0.2:12345 --report_unit=Gb',
    'mooncake-node bench --compare --block-size 64K',
  ],
  async run(flags, ctx: CommandContext) {
    const { 'until-stdin-closes': untilStdinCloses, ...rest } = flags;
    const o = benchOptionsFromFlags(rest);
    await runBench(o, benchIO(ctx, o.quiet), untilStdinCloses === true);
  },
});
