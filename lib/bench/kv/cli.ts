/** `mooncake-node bench kv`: what a prompt's KV costs to move, on real model layouts. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defineCommand, type CommandContext } from '../../cli/command';
import { flagError } from '../../cli/flags';
import { benchIO, untilStopped } from '../io';
import { kvChart } from './chart';
import { KV_BENCH_FLAGS, kvBenchOptionsFromFlags, type KvBenchOptions } from './options';
import { kvRatioLines, kvTable } from './report';
import { runKvBench } from './run';
import { serveKvTarget } from './target';

async function runTargetMode(o: KvBenchOptions, ctx: CommandContext, untilStdinCloses: boolean): Promise<void> {
  const io = benchIO(ctx, o.quiet);
  const stop = untilStopped(ctx.signal, untilStdinCloses);
  try {
    await serveKvTarget({ metadataServer: o.metadataServer!, host: o.host, ioThreads: o.ioThreads }, o.controlPort, (ready) => {
      if (o.json) io.out(JSON.stringify(ready));
      else io.log(`bench kv target ready: start the initiator with --target ${ready.control} (Ctrl-C stops the target)`);
    }, stop.stopped);
    if (o.json) io.out(JSON.stringify({ done: true }));
  } finally {
    stop.release();
  }
}

export const benchKvCommand = defineCommand({
  name: 'bench kv',
  summary: "KV of real model layouts between a prefill and a decode instance: per-request time, against the bare engine and the real connector",
  description: [
    'Moves a prompt\'s KV cache through KvProducer/KvConsumer as a serving stack does (pull, push, or layer by layer',
    'as prefill computes), on model presets with real shapes, and reports per-request time (p50/p99: what it adds to',
    'time-to-first-token), GB/s, ranges per request, event-loop delay and CPU. In the same run it times the same',
    "ranges through the bare engine, and vllm-ascend's own transfer path (upstream's engine) where",
    'scripts/setup-connectors.sh has set it up. Loopback (the default) needs no set-up.',
  ].join('\n'),
  flags: KV_BENCH_FLAGS,
  examples: [
    'mooncake-node bench kv',
    'mooncake-node bench kv --model deepseek-v2-lite llama3-8b --prompt-tokens 512 2k 8k 32k --chart kv.svg',
    'mooncake-node bench kv --prefill-tp 4 --decode-tp 2 --transfer pull push layerwise',
    'mooncake-node bench kv --model custom --attention mla --layers 61 --head-dim 512 --rope-dim 64',
    'mooncake-node bench kv --mode target --metadata-server http://10.0.0.1:8080/metadata --host 10.0.0.2 --control-port 17500',
    'mooncake-node bench kv --mode initiator --metadata-server http://10.0.0.1:8080/metadata --host 10.0.0.1 --target 10.0.0.2:17500',
  ],
  async run(flags, ctx: CommandContext) {
    const { 'until-stdin-closes': untilStdinCloses, ...rest } = flags;
    const o = kvBenchOptionsFromFlags({ ...rest, 'until-stdin-closes': undefined });
    if (o.mode === 'target') return runTargetMode(o, ctx, untilStdinCloses === true);
    if (o.chart !== undefined) {
      const dir = path.dirname(path.resolve(o.chart));
      try {
        fs.accessSync(dir, fs.constants.W_OK);
      } catch {
        throw flagError('--chart', o.chart, `cannot write into ${dir}`);
      }
    }
    const io = benchIO(ctx, o.quiet);
    const result = await runKvBench(o, {
      signal: ctx.signal,
      log: (l) => {
        if (io.progress) io.progress('\n');
        io.log(l);
      },
      progress: io.progress,
    });
    if (io.progress) io.progress('\n');
    if (o.chart !== undefined) {
      fs.writeFileSync(o.chart, kvChart(result));
      io.log(`chart written to ${o.chart}`);
    }
    if (o.json) {
      io.out(JSON.stringify(result));
      return;
    }
    io.out(kvTable(result));
    io.out('');
    for (const l of kvRatioLines(result)) io.out(l);
  },
});
