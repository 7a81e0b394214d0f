#!/usr/bin/env node
// Runs every benchmark figure the README and docs/bench.md show, and writes them from the runs' JSON:
//
//   - bench kv: the model presets at 512..32k tokens (pull, with the bare engine and, where
//     scripts/setup-connectors.sh ran, vllm-ascend's own decode path in the same run), push and layerwise
//     push, and prefill TP 2 -> 1 and 4 -> 2;
//   - bench --compare at 1M, 64K and 4K blocks, each the median of 3 runs;
//   - bench --sweep over 4K..4M with min-max bars from 3 runs.
//
// Output: docs/bench-results.json (every run's JSON, the load average around each), docs/bench-kv.svg,
// docs/bench-sweep.svg, and the tables between `<!-- bench-report:NAME -->` and `<!-- /bench-report:NAME -->`
// in README.md and docs/bench.md. Run it on a quiet machine (it prints the load average; figures taken
// above ~1.5 on 2 cores are marked as taken under load). About 25 minutes on a 2-core VM.
//
// Usage: node scripts/bench-report.mjs [--quick] [--only kv,compare,sweep] [--render-only] [--out DIR] [--readme FILE]
//   --quick        tiny cases and short runs (checks the driver works; the figures mean nothing)
//   --only         run only these parts (the others keep their figures from the existing JSON)
//   --render-only  write the tables and charts' markdown from the existing JSON, measure nothing
//   --out DIR      where bench-results.json, the charts and bench.md are (default docs/)
//   --readme FILE  the README to update (default README.md)
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(repo, 'dist', 'cli.js');

function parseArgs(argv) {
  const a = { quick: false, only: ['kv', 'compare', 'sweep'], renderOnly: false, out: path.join(repo, 'docs'), readme: path.join(repo, 'README.md') };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--quick') a.quick = true;
    else if (x === '--render-only') a.renderOnly = true;
    else if (x === '--only') a.only = argv[++i].split(',');
    else if (x === '--out') a.out = path.resolve(argv[++i]);
    else if (x === '--readme') a.readme = path.resolve(argv[++i]);
    else if (x === '-h' || x === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 21).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      process.exit(0);
    } else {
      console.error(`bench-report: unknown argument ${x} (try --help)`);
      process.exit(2);
    }
  }
  return a;
}

const load = () => os.loadavg().map((x) => Number(x.toFixed(2)));

/** Runs `mooncake-node <args>` and returns its JSON stdout; progress goes to our stderr. */
function run(args) {
  return new Promise((resolve, reject) => {
    console.error(`\n$ mooncake-node ${args.join(' ')}   (load ${load().join(' ')})`);
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`mooncake-node ${args.join(' ')} exited with ${code}`));
      try {
        resolve(JSON.parse(out));
      } catch (e) {
        reject(new Error(`mooncake-node ${args.join(' ')} printed no JSON: ${e.message}`));
      }
    });
  });
}

async function measure(a, previous) {
  const q = a.quick;
  const kvCommon = q ? ['--block-size', '16', '--rounds', '1', '--requests', '3'] : ['--rounds', '3'];
  const r = { ...previous };
  const part = async (name, f) => {
    if (!a.only.includes(name)) return;
    const before = load();
    const t0 = Date.now();
    // The 1-minute load average every 15 s while the part runs: the tables quote its range.
    const samples = [before[0]];
    const sampler = setInterval(() => samples.push(load()[0]), 15_000);
    let runs;
    try {
      runs = await f();
    } finally {
      clearInterval(sampler);
    }
    const after = load();
    samples.push(after[0]);
    r[name] = { loadBefore: before, runs, loadAfter: after, loadMax: Math.max(...samples), loadMin: Math.min(...samples), minutes: Number(((Date.now() - t0) / 60000).toFixed(1)), at: new Date().toISOString(), quick: q };
  };
  await part('kv', async () => ({
    pull: await run(['bench', 'kv', '--model', 'deepseek-v2-lite', 'llama3-8b', 'qwen2.5-7b', '--prompt-tokens', ...(q ? ['64', '256'] : ['512', '2k', '8k', '32k']),
      '--transfer', 'pull', '--chart', path.join(a.out, 'bench-kv.svg'), '--json', ...kvCommon]),
    push: await run(['bench', 'kv', '--model', 'deepseek-v2-lite', 'llama3-8b', '--prompt-tokens', ...(q ? ['64'] : ['512', '2k', '8k']), '--transfer', 'push', 'layerwise', '--json', ...kvCommon]),
    tp2to1: await run(['bench', 'kv', '--model', 'deepseek-v2-lite', 'llama3-8b', '--prompt-tokens', q ? '64' : '2k', '--prefill-tp', '2', '--decode-tp', '1', '--transfer', 'pull', 'push', '--json', ...kvCommon]),
    tp4to2: await run(['bench', 'kv', '--model', 'deepseek-v2-lite', 'llama3-8b', '--prompt-tokens', q ? '64' : '2k', '--prefill-tp', '4', '--decode-tp', '2', '--transfer', 'pull', 'push', '--json', ...kvCommon]),
  }));
  const duration = q ? '0.3' : '3';
  await part('compare', async () => {
    const out = {};
    for (const b of ['1M', '64K', '4K']) out[b] = await run(['bench', '--compare', '--block-size', b, '--batch-size', '32', '--threads', '4', '--duration', duration, '--repeat', q ? '1' : '3', '--json']);
    return out;
  });
  await part('sweep', async () => run(['bench', '--sweep', path.join(a.out, 'bench-sweep.svg'), '--duration', q ? '0.3' : '2', '--repeat', q ? '1' : '3', '--json']));
  return r;
}

// ---- rendering ----------------------------------------------------------------------------------------

const f = (x, d = 2) => (x === undefined || x === null || !Number.isFinite(x) ? '—' : x.toFixed(d));
const tokens = (n) => (n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n));
const gbs = (bw) => `${f(bw / 1e9)} GB/s`;
const ok = (met) => (met === undefined ? '' : met ? ' ✓' : ' ✗');

function caption(part) {
  if (!part) return '';
  const loaded = part.loadBefore[0] > 1.5 || part.loadAfter[0] > 1.5 || part.loadMax > 1.5;
  const during = part.loadMax !== undefined ? ` (${part.loadMin}–${part.loadMax} during the run)` : '';
  return `Measured ${part.at.slice(0, 10)} by \`node scripts/bench-report.mjs\`, load average ${part.loadBefore[0]} before and ${part.loadAfter[0]} after${during}` +
    (loaded ? ' (**load above 1.5**: a benchmark\'s own initiator and target bring a 2-core machine near 2; more than ~3 means other work shared the cores, and its figures are worth a rerun)' : '') + (part.quick ? ' (**--quick**: not meaningful figures)' : '') + '.';
}

function kvCases(kv) {
  return kv ? Object.values(kv.runs).flatMap((r) => r.cases) : [];
}

function kvReadme(kv) {
  const pull = kv?.runs.pull.cases ?? [];
  const rows = pull.map((c) => {
    const v = c.realConnector;
    const real = v && !v.skipReason ? `${f(v.real.p50Ms, 1)} vs ${f(v.node.p50Ms, 1)} ms (${f(v.speedup)}×${ok(v.met)})` : '—';
    const ceiling = v && !v.skipReason && v.engine ? `${f(v.engine.p50Ms, 1)} ms (${f(v.engineSpeedup)}×)` : '—';
    return `| ${c.case.model} | ${tokens(c.case.promptTokens)} | ${f(c.bytesPerRequest / 2 ** 20, 1)} MiB, ${c.rangesPerRequest} ranges | ${f(c.kv.p50Ms, 1)} / ${f(c.kv.p99Ms, 1)} ms | ${f(c.kv.gbps)} | ${f(c.engine?.p50Ms, 1)} ms (${f(c.overhead?.ratio, 3)}×${ok(c.overhead?.met)}) | ${real} | ${ceiling} |`;
  });
  const lw = (kv?.runs.push.cases ?? []).filter((c) => c.layerwise);
  const loop = loopDelays(kv);
  return [
    `${caption(kv)} p50/p99 over all rounds; each ratio is the median of the rounds' ratios (the two sides of a ratio run back to back, in alternating order), so it need not equal the quotient of two p50 columns.`,
    '',
    '| model | prompt | KV per request | KV layer p50 / p99 | GB/s | bare engine, same ranges (KV ÷ engine, target ≤ 1.1×) | vllm-ascend\'s decode vs mooncake-node\'s, both on vllm-ascend\'s side channel, same prefill (its time ÷ ours, target ≥ 2×) | the bare engine in the same rounds (vllm-ascend\'s time ÷ its: the ceiling of the ratio before) |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    ...lw.map((c) => `- Layerwise push, ${c.case.model} ${tokens(c.case.promptTokens)}: layers computed ${f(c.layerwise.computeMs, 1)} ms each; the KV is complete ${f(c.layerwise.tailP50Ms, 2)} ms (p50) after the last layer, against ${f(c.layerwise.oneLayerEngineP50Ms, 2)} ms for one layer through the bare engine (${f(c.layerwise.tailRatio)}×, target ≤ 1×${ok(c.layerwise.met)}) and ${f(c.layerwise.oneLayerNotifyP50Ms, 2)} ms for one layer followed by one completion message through the bare engine; pushing after the prefill would add ${f(c.engine?.p50Ms, 1)} ms.`),
    `- Event-loop delay p99 while requests are in flight, both processes: at most ${f(loop.kv)} ms over the KV layer's phases, median ${f(loop.kvMedian)} ms over the cases (target < 10 ms${ok(loop.kv < 10)}); the bare engine's phases of the same cases: at most ${f(loop.engine)} ms, median ${f(loop.engineMedian)} ms.`,
  ].join('\n');
}

/** Event-loop delay p99 (ms) of the KV layer's and the bare engine's timed phases, both processes: max and median over cases. */
function loopDelays(kv) {
  const cases = kvCases(kv);
  const worst = (p) => (p ? Math.max(p.loopDelayP99Ms, p.target?.loopDelayP99Ms ?? 0) : undefined);
  const med = (xs) => {
    const s = xs.filter((x) => x !== undefined).sort((a, b) => a - b);
    return s.length ? s[s.length >> 1] : NaN;
  };
  const k = cases.map((c) => worst(c.kv));
  const e = cases.map((c) => worst(c.engine)).filter((x) => x !== undefined);
  return { kv: Math.max(...k), kvMedian: med(k), engine: e.length ? Math.max(...e) : NaN, engineMedian: med(e) };
}

function kvDetail(kv) {
  const rows = kvCases(kv).map((c) => {
    const par = `tp${c.case.prefill.tpSize}→tp${c.case.decode.tpSize}`;
    const v = c.realConnector;
    const real = v ? (v.skipReason ? 'n/a' : `${f(v.real.p50Ms, 1)} vs ${f(v.node.p50Ms, 1)} ms, ${f(v.speedup)}×${v.engine ? ` (engine ${f(v.engine.p50Ms, 1)} ms, ${f(v.engineSpeedup)}×)` : ''}`) : '—';
    const ratio = c.overhead ? `${f(c.overhead.ratio, 3)}×` : c.layerwise ? `tail ${f(c.layerwise.tailP50Ms)} ms vs 1 layer ${f(c.layerwise.oneLayerEngineP50Ms)} ms (+ message ${f(c.layerwise.oneLayerNotifyP50Ms)} ms)` : '—';
    return `| ${c.case.model} | ${tokens(c.case.promptTokens)} | ${par} | ${c.case.transfer} | ${c.rangesPerRequest} | ${f(c.kv.p50Ms, 1)} | ${f(c.kv.p99Ms, 1)} | ${c.case.transfer === 'layerwise' ? '—' : f(c.kv.gbps)} | ${f(c.engine?.p50Ms, 1)} | ${ratio} | ${real} | ${f(c.kv.loopDelayP99Ms)} / ${f(c.kv.target?.loopDelayP99Ms)} (${f(c.engine?.loopDelayP99Ms)} / ${f(c.engine?.target?.loopDelayP99Ms)}) | ${f(c.kv.cpuMsPerRequest)} (${f(c.engine?.cpuMsPerRequest)}) / ${f(c.kv.targetCpuMsPerRequest)} |`;
  });
  return [
    caption(kv),
    '',
    '| model | prompt | TP | transfer | ranges | p50 ms | p99 ms | GB/s | engine p50 ms | KV ÷ engine | real connector vs mooncake-node on its side channel (ratio; the bare engine in the same rounds) | loop p99 ms, here / target (engine alone) | CPU ms per request: here (engine alone) / target |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function bestUp(c) {
  return c.upstream.length ? c.upstream.reduce((a, u) => (u.bandwidth > a.bandwidth ? u : a)) : undefined;
}

function bestRaw(c) {
  return c.raw.reduce((a, r) => (r.bandwidth > a.bandwidth ? r : a));
}

function blockTable(compare) {
  const targets = { '1M': '≥ 90 % of raw, ≥ 1.2× upstream', '64K': '≥ 1.5× upstream', '4K': '≥ 5× upstream ops/s' };
  const rows = Object.entries(compare?.runs ?? {}).map(([b, r]) => {
    const c = r.results[0];
    const up = bestUp(c);
    const raw = bestRaw(c);
    const ops = b === '4K';
    const node = ops ? `${f(c.node.opsPerSec / 1e3, 0)} k ops/s` : gbs(c.node.bandwidth);
    const upstream = up ? (ops ? `${f(up.opsPerSec / 1e3, 1)} k ops/s` : gbs(up.bandwidth)) : '—';
    const ratio = ops ? c.ratios.vsUpstreamBestOps : c.ratios.vsUpstreamBest;
    const need = b === '1M' ? 1.2 : b === '64K' ? 1.5 : 5;
    const rawPart = b === '1M' ? `${f(c.ratios.vsRawBest * 100, 0)} % of raw${ok(c.ratios.vsRawBest >= 0.9)}, ` : '';
    return `| ${b} | ${node} | ${upstream} | ${gbs(raw.bandwidth)} (${raw.impl.replace(/^raw TCP /, '')}) | ${gbs(c.memcpy?.bandwidth ?? NaN)} | ${targets[b]} | ${rawPart}${f(ratio)}× upstream${ok(ratio >= need)} |`;
  });
  const n = Object.values(compare?.runs ?? {})[0]?.results[0]?.runs.length ?? 0;
  return [
    `${caption(compare)} Medians of ${n} runs (\`--repeat ${n}\`), each ratio the median of the runs' ratios.`,
    '',
    '| block | mooncake-node | upstream\'s best mode | raw TCP ceiling (best reference) | one core\'s memcpy (loopback limit) | stated target | result |',
    '|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function sweepTable(sweep) {
  const results = sweep?.runs.results ?? [];
  const cell = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return `${f(s[s.length >> 1] / 1e9)} (${f(s[0] / 1e9)}–${f(s[s.length - 1] / 1e9)})`;
  };
  const head = `| block | ${results.map((c) => c.node.blockSize >= 1 << 20 ? `${c.node.blockSize >> 20} MiB` : `${c.node.blockSize >> 10} KiB`).join(' | ')} |`;
  return [
    `${caption(sweep)} GB/s, median (min–max) of ${results[0]?.runs.length ?? 0} runs.`,
    '',
    head,
    `|---|${results.map(() => '---').join('|')}|`,
    `| mooncake-node | ${results.map((c) => cell(c.runs.map((r) => r.node.bandwidth))).join(' | ')} |`,
    `| upstream best | ${results.map((c) => cell(c.runs.map((r) => Math.max(0, ...r.upstream.map((u) => u.bandwidth))))).join(' | ')} |`,
    `| raw TCP best | ${results.map((c) => cell(c.runs.map((r) => Math.max(...r.raw.map((u) => u.bandwidth))))).join(' | ')} |`,
    `| memcpy, 1 core | ${results.map((c) => cell(c.runs.map((r) => r.memcpy?.bandwidth ?? NaN))).join(' | ')} |`,
    `| × upstream | ${results.map((c) => f(c.ratios.vsUpstreamBest, 1)).join(' | ')} |`,
    `| % of raw | ${results.map((c) => f(c.ratios.vsRawBest * 100, 0)).join(' | ')} |`,
  ].join('\n');
}

/** Replaces the text between the markers of `name` in `file`; the markers must be there. */
function replaceSection(file, name, body) {
  const text = fs.readFileSync(file, 'utf8');
  const open = `<!-- bench-report:${name} -->`;
  const close = `<!-- /bench-report:${name} -->`;
  const i = text.indexOf(open);
  const j = text.indexOf(close);
  if (i < 0 || j < i) throw new Error(`${file} has no ${open} ... ${close} section`);
  fs.writeFileSync(file, text.slice(0, i + open.length) + '\n' + body + '\n' + text.slice(j));
}

function render(a, r) {
  const benchMd = path.join(a.out, 'bench.md');
  if (r.kv) {
    replaceSection(a.readme, 'kv', kvReadme(r.kv));
    replaceSection(benchMd, 'kv-detail', kvDetail(r.kv));
  }
  if (r.compare) {
    replaceSection(a.readme, 'block', blockTable(r.compare));
    replaceSection(benchMd, 'block', blockTable(r.compare));
  }
  if (r.sweep) replaceSection(benchMd, 'sweep', sweepTable(r.sweep));
}

function summary(r) {
  const lines = [];
  for (const c of kvCases(r.kv)) {
    const name = `${c.case.model} ${tokens(c.case.promptTokens)} tp${c.case.prefill.tpSize}->tp${c.case.decode.tpSize} ${c.case.transfer}`;
    if (c.overhead) lines.push(`${name}: KV / engine ${f(c.overhead.ratio, 3)}x (<= 1.1${ok(c.overhead.met)})`);
    if (c.layerwise) lines.push(`${name}: tail ${f(c.layerwise.tailP50Ms)} ms vs one layer ${f(c.layerwise.oneLayerEngineP50Ms)} ms (${f(c.layerwise.tailRatio)}x, <= 1${ok(c.layerwise.met)}), one layer + message ${f(c.layerwise.oneLayerNotifyP50Ms)} ms`);
    if (c.realConnector && !c.realConnector.skipReason) lines.push(`${name}: ${c.realConnector.path} / mooncake-node ${f(c.realConnector.speedup)}x${c.realConnector.targetMin ? ` (>= ${c.realConnector.targetMin}${ok(c.realConnector.met)})` : ''}, / bare engine ${f(c.realConnector.engineSpeedup)}x`);
    lines.push(`${name}: loop p99 ${f(Math.max(c.kv.loopDelayP99Ms, c.kv.target?.loopDelayP99Ms ?? 0))} ms (engine ${f(Math.max(c.engine?.loopDelayP99Ms ?? NaN, c.engine?.target?.loopDelayP99Ms ?? 0))} ms)`);
  }
  for (const [b, x] of Object.entries(r.compare?.runs ?? {})) {
    const c = x.results[0];
    lines.push(`${b}: ${f(c.ratios.vsUpstreamBest)}x upstream GB/s, ${f(c.ratios.vsUpstreamBestOps)}x ops/s, ${f(c.ratios.vsRawBest * 100, 0)}% of raw, ${f((c.ratios.vsMemcpy ?? NaN) * 100, 0)}% of memcpy`);
  }
  return lines.join('\n');
}

const a = parseArgs(process.argv.slice(2));
const jsonFile = path.join(a.out, 'bench-results.json');
const previous = fs.existsSync(jsonFile) ? JSON.parse(fs.readFileSync(jsonFile, 'utf8')) : {};
console.error(`bench-report: load average ${load().join(' ')} on ${os.cpus().length} cores${load()[0] > 1.5 ? ' (busy: figures will be marked as taken under load)' : ''}`);
const results = a.renderOnly ? previous : await measure(a, previous);
if (!a.renderOnly) fs.writeFileSync(jsonFile, JSON.stringify(results, null, 1) + '\n');
render(a, results);
console.log(summary(results));
