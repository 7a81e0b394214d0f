#!/usr/bin/env node
// The cost of the engine's per-peer metrics: `mooncake-node bench` (loopback, TCP) with metrics on
// (default) and off (--metrics-max-peers 0), alternated in one run so both see the same machine load.
// Prints the median ops/s of each and their ratio per block size.
//   node scripts/bench-metrics.mjs [--rounds 5] [--duration 3] [--block-sizes 4K,64K]
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const rounds = Number(arg('rounds', '5'));
const duration = arg('duration', '3');
const sizes = arg('block-sizes', '4K,64K').split(',');
const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli.js');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function run(size, metricsMaxPeers) {
  const out = execFileSync(process.execPath, [cli, 'bench', '--json', '--quiet', '--duration', duration, '--block-size', size, '--metrics-max-peers', String(metricsMaxPeers)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()).opsPerSec;
}

console.log(`metrics on vs off, ${rounds} alternating rounds of ${duration} s, loopback TCP, batch 128 x 4 in flight`);
for (const size of sizes) {
  const on = [];
  const off = [];
  for (let r = 0; r < rounds; r++) {
    // Alternate which goes first, so a trend in the machine's load does not favour one side.
    if (r % 2 === 0) { on.push(run(size, 64)); off.push(run(size, 0)); } else { off.push(run(size, 0)); on.push(run(size, 64)); }
  }
  const ratios = on.map((v, i) => v / off[i]);
  console.log(`${size.padStart(4)}: on ${Math.round(median(on))} ops/s, off ${Math.round(median(off))} ops/s, ratio on/off ${median(on) / median(off) > 0 ? (median(on) / median(off)).toFixed(3) : '?'} (per-round median ${median(ratios).toFixed(3)}, range ${Math.min(...ratios).toFixed(3)}..${Math.max(...ratios).toFixed(3)})`);
}
