#!/usr/bin/env node
// Soak driver: 4 engine processes (test/reliability/fixtures/node.cjs) move mixed traffic
// among themselves for --duration seconds -- every process runs one lane per peer: WRITE then READ
// back and compare, sizes from 1 byte to --max-size (skewed small), single requests and 8-request
// batches, a notify every 53 rounds, the segment closed and reopened every 97, a fresh region
// registered, used once and unregistered every 29 (each one republishes the descriptor to the
// metadata server). RSS, descriptors and threads of every process are sampled every --sample
// seconds; the report gives start, end, max and the least-squares slope after the warm-up.
//
// Usage: node test/reliability/soak.cjs [--duration 600] [--sample 5] [--max-size 1048576]
//                                       [--json out.json] [--max-rss-slope 2] [--pause 0] [--quiet]
// (--pause: ms each lane sleeps between rounds, to keep a short soak from hogging the machine)
// Exit status 1 when a transfer failed or mismatched, or descriptors/threads grew, or an RSS slope
// after the warm-up is above --max-rss-slope MiB/min. Needs a built tree (npm run build).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const { parseArgs } = require('node:util');

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' },
    sample: { type: 'string', default: '5' },
    'max-size': { type: 'string', default: String(1 << 20) },
    json: { type: 'string' },
    'max-rss-slope': { type: 'string', default: '2' },
    pause: { type: 'string', default: '0' },
    quiet: { type: 'boolean', default: false },
  },
});
const DURATION = Number(args.duration) * 1000;
const SAMPLE = Number(args.sample) * 1000;
const MAX_SIZE = Number(args['max-size']);
const MAX_SLOPE = Number(args['max-rss-slope']);
const N = 4;
const WINDOW = 4 * MAX_SIZE; // each writer's window in every peer
const LOCAL = N * WINDOW; // lane buffers start here (3 lanes x 2 x MAX_SIZE)
const MEMORY = LOCAL + (N - 1) * 2 * MAX_SIZE;
const WARMUP = Math.min(60_000, DURATION / 10);

const root = path.join(__dirname, '../..');
const { MetadataServer } = require(path.join(root, 'dist/index.js'));
const FIXTURE = path.join(__dirname, 'fixtures/node.cjs');
const log = (...a) => { if (!args.quiet) console.error(...a); };
const MiB = 1 << 20;

function sample(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    rss: Number(/VmRSS:\s+(\d+)/.exec(status)[1]) * 1024,
    fds: fs.readdirSync(`/proc/${pid}/fd`).length,
    threads: fs.readdirSync(`/proc/${pid}/task`).length,
  };
}

function startNode(cfg) {
  const child = spawn(process.execPath, ['--expose-gc', FIXTURE, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout });
  const waiting = new Map();
  let nextId = 1;
  let info;
  const ready = new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${cfg.localServerName} exited (${code}) before it was ready`)));
    rl.once('line', (l) => {
      info = JSON.parse(l);
      if (!info.ready) reject(new Error(`${cfg.localServerName}: ${JSON.stringify(info.error)}`));
      rl.on('line', (line) => {
        const m = JSON.parse(line);
        const w = waiting.get(m.id);
        if (!w) return;
        waiting.delete(m.id);
        if (m.ok) w.resolve(m.result);
        else w.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
      });
      resolve();
    });
  });
  child.once('exit', () => { for (const w of waiting.values()) w.reject(new Error(`${cfg.localServerName} exited`)); });
  const call = (cmd, a = {}) => new Promise((resolve, reject) => {
    const id = nextId++;
    waiting.set(id, { resolve, reject });
    child.stdin.write(JSON.stringify({ id, cmd, args: a }) + '\n');
  });
  return { child, ready, call, get info() { return info; }, name: cfg.localServerName };
}

/** Least-squares slope of y over x (per x unit). */
function slope(xs, ys) {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) { num += (xs[i] - mx) * (ys[i] - my); den += (xs[i] - mx) ** 2; }
  return den === 0 ? 0 : num / den;
}

async function main() {
  const meta = new MetadataServer({ logger: null });
  const { url } = await meta.listen();
  const nodes = [];
  for (let i = 0; i < N; i++) nodes.push(startNode({ metadataServer: url, localServerName: `soak-${i}`, memory: MEMORY }));
  let exitCode = 0;
  try {
    await Promise.all(nodes.map((n) => n.ready));
    log(`soak: ${N} processes (pids ${nodes.map((n) => n.info.pid).join(', ')}), ${DURATION / 1000} s, sizes up to ${MAX_SIZE} B, sampling every ${SAMPLE / 1000} s`);
    const series = nodes.map(() => []);
    const driverSeries = [];
    const t0 = Date.now();
    const take = () => {
      const t = (Date.now() - t0) / 1000;
      nodes.forEach((n, i) => series[i].push({ t, ...sample(n.info.pid) }));
      driverSeries.push({ t, ...sample(process.pid) });
    };
    take();
    await Promise.all(nodes.map((n, i) => n.call('soak.start', {
      targets: nodes.filter((_, j) => j !== i).map((m) => m.name),
      writerIndex: i,
      window: WINDOW,
      localBase: LOCAL,
      maxSize: MAX_SIZE,
      timeoutMs: 30_000,
      pauseMs: Number(args.pause),
    })));
    let lastLog = 0;
    while (Date.now() - t0 < DURATION) {
      await new Promise((r) => setTimeout(r, Math.min(SAMPLE, DURATION - (Date.now() - t0))));
      take();
      if (Date.now() - lastLog >= 60_000 || Date.now() - t0 >= DURATION) {
        lastLog = Date.now();
        const peeks = await Promise.all(nodes.map((n) => n.call('soak.peek')));
        const transfers = peeks.reduce((a, p) => a + p.transfers, 0);
        const errors = peeks.reduce((a, p) => a + Object.values(p.errors).reduce((x, y) => x + y, 0), 0);
        log(`  t=${((Date.now() - t0) / 1000).toFixed(0)} s: ${transfers} transfers, ${errors} errors; rss ${series.map((s) => (s[s.length - 1].rss / MiB).toFixed(0)).join('/')} MiB, fds ${series.map((s) => s[s.length - 1].fds).join('/')}, threads ${series.map((s) => s[s.length - 1].threads).join('/')}`);
      }
    }
    // Stop every lane first, then ask what arrived: a notify is counted by its receiver only once
    // nothing can still be on its way (counting each process as its own lanes stopped raced with
    // notifies the others were still sending, and once reported one fewer received than sent).
    const results = await Promise.all(nodes.map((n) => n.call('soak.stop')));
    const received = await Promise.all(nodes.map((n) => n.call('soak.received')));
    const receivedBy = new Map(nodes.map((n, i) => [n.name, new Set(received[i].keys)]));
    const lost = [];
    results.forEach((r) => {
      for (const [target, keys] of Object.entries(r.acked)) for (const k of keys) if (!receivedBy.get(target).has(k)) lost.push(`${k} -> ${target}`);
    });
    for (const r of results) delete r.acked;
    const elapsed = (Date.now() - t0) / 1000;
    // Settled end: after a GC in every process, so RSS is not just garbage waiting to be collected.
    await Promise.all(nodes.map((n) => n.call('gc')));
    const settled = nodes.map((n) => sample(n.info.pid));
    const stats = await Promise.all(nodes.map((n) => n.call('stats')));

    const report = { durationS: elapsed, sampleS: SAMPLE / 1000, maxSize: MAX_SIZE, warmupS: WARMUP / 1000, processes: [] };
    const summarize = (name, s, end, r, st) => {
      const after = s.filter((x) => x.t >= WARMUP / 1000);
      const use = after.length >= 2 ? after : s;
      const pick = (k) => ({
        start: s[0][k],
        afterWarmup: use[0][k],
        end: s[s.length - 1][k],
        settledEnd: end ? end[k] : undefined,
        max: Math.max(...s.map((x) => x[k])),
        slopePerMin: slope(use.map((x) => x.t / 60), use.map((x) => x[k])),
        slopeSecondHalfPerMin: slope(late.map((x) => x.t / 60), late.map((x) => x[k])),
      });
      const late = s.filter((x) => x.t >= s[s.length - 1].t / 2);
      return {
        name, samples: s.length, rss: pick('rss'), fds: pick('fds'), threads: pick('threads'),
        ...(r ? { soak: r } : {}), ...(st ? { stats: st } : {}),
        series: s.map((x) => [Math.round(x.t), x.rss, x.fds, x.threads]), // [s, rss bytes, fds, threads]
      };
    };
    nodes.forEach((n, i) => report.processes.push(summarize(n.name, series[i], settled[i], results[i], stats[i])));
    report.driver = summarize('driver (metadata server)', driverSeries, undefined);
    const totals = {
      transfers: results.reduce((a, r) => a + r.transfers, 0),
      bytes: results.reduce((a, r) => a + r.bytes, 0),
      mismatches: results.reduce((a, r) => a + r.mismatches, 0),
      errors: results.reduce((a, r) => { for (const [k, v] of Object.entries(r.errors)) a[k] = (a[k] || 0) + v; return a; }, {}),
      notifiesSent: results.reduce((a, r) => a + r.notifiesSent, 0),
      notifiesReceived: received.reduce((a, r) => a + r.notifiesReceived, 0),
      notifiesLost: lost.length,
      segmentReopens: results.reduce((a, r) => a + r.reopened, 0),
      regionsRegistered: results.reduce((a, r) => a + r.registered, 0),
      regionsUnregistered: results.reduce((a, r) => a + r.unregistered, 0),
    };
    report.totals = totals;

    // Verdict.
    const problems = [];
    if (totals.mismatches) problems.push(`${totals.mismatches} mismatched transfers`);
    if (Object.keys(totals.errors).length) problems.push(`errors ${JSON.stringify(totals.errors)}: ${results.flatMap((r) => r.errorSamples).slice(0, 3).join('; ')}`);
    if (lost.length) problems.push(`${lost.length} acknowledged notifies never arrived: ${lost.slice(0, 3).join('; ')}`);
    if (totals.notifiesReceived !== totals.notifiesSent) problems.push(`notifies: ${totals.notifiesSent} sent, ${totals.notifiesReceived} received`);
    for (const p of report.processes) {
      if (p.fds.end > p.fds.afterWarmup + 2) problems.push(`${p.name}: descriptors ${p.fds.afterWarmup} -> ${p.fds.end}`);
      if (p.threads.end > p.threads.afterWarmup + 1) problems.push(`${p.name}: threads ${p.threads.afterWarmup} -> ${p.threads.end}`);
      if (p.rss.slopePerMin / MiB > MAX_SLOPE) problems.push(`${p.name}: RSS grows ${(p.rss.slopePerMin / MiB).toFixed(2)} MiB/min after the warm-up`);
    }
    report.problems = problems;

    const mb = (x) => (x / MiB).toFixed(1);
    const out = [];
    out.push(`soak: ${elapsed.toFixed(0)} s, ${N} processes, ${totals.transfers} transfers (${(totals.bytes / 1e9).toFixed(2)} GB, every one verified), ${totals.mismatches} mismatches, errors ${JSON.stringify(totals.errors)}`);
    out.push(`      ${totals.notifiesSent} notifies sent / ${totals.notifiesReceived} received (${totals.notifiesLost} acknowledged ones missing), ${totals.segmentReopens} segment reopens, ${totals.regionsRegistered} regions registered / ${totals.regionsUnregistered} unregistered`);
    out.push('process                    rss MiB start/warm/end/settled/max  slope MiB/min (after warm-up, 2nd half) | fds start/end/max slope/min | threads start/end/max');
    for (const p of [...report.processes, report.driver]) {
      out.push(`${p.name.padEnd(26)} ${[p.rss.start, p.rss.afterWarmup, p.rss.end, p.rss.settledEnd ?? NaN, p.rss.max].map((x) => (Number.isNaN(x) ? '-' : mb(x))).join('/').padEnd(32)} ${(p.rss.slopePerMin / MiB).toFixed(3).padStart(7)}, ${(p.rss.slopeSecondHalfPerMin / MiB).toFixed(3).padStart(7)}              | ${p.fds.start}/${p.fds.end}/${p.fds.max} ${p.fds.slopePerMin.toFixed(3)} | ${p.threads.start}/${p.threads.end}/${p.threads.max}`);
    }
    out.push(problems.length ? `PROBLEMS: ${problems.join('; ')}` : 'verdict: no errors, no mismatches, no descriptor/thread growth, RSS flat after the warm-up');
    console.log(out.join('\n'));
    if (args.json) fs.writeFileSync(args.json, JSON.stringify(report, null, 2));
    if (problems.length) exitCode = 1;
  } catch (e) {
    console.error(`soak failed: ${e && e.stack ? e.stack : e}`);
    exitCode = 2;
  } finally {
    await Promise.all(nodes.map((n) => new Promise((resolve) => {
      if (n.child.exitCode !== null) return resolve();
      const t = setTimeout(() => n.child.kill('SIGKILL'), 10_000);
      n.child.once('exit', () => { clearTimeout(t); resolve(); });
      n.call('close').catch(() => undefined);
      n.child.stdin.end();
    })));
    await meta.close();
  }
  process.exit(exitCode);
}

main();
