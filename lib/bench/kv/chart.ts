/** `bench kv --chart`: time per request against prompt length, one line per model and transfer mode. */
import { lineChart, type ChartSeries } from '../chart';
import type { KvBenchResult } from './result';

function tokens(n: number): string {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n);
}

export function kvChart(r: KvBenchResult): string {
  const series = new Map<string, ChartSeries>();
  const add = (name: string, x: number, y: number, lo?: number, hi?: number, dashed = false) => {
    if (!series.has(name)) series.set(name, { name, points: [], dashed });
    series.get(name)!.points.push({ x, y, lo, hi });
  };
  for (const c of r.cases) {
    const label = `${c.case.model} ${c.case.transfer}`;
    const x = c.case.promptTokens;
    // Per-round medians give the bar: how much the rounds disagreed.
    const rounds = c.rounds.map((q) => q.kvP50Ms);
    add(label, x, c.kv.p50Ms, Math.min(...rounds), Math.max(...rounds));
    if (c.engine && c.case.transfer !== 'layerwise') add(`${c.case.model} ${c.case.transfer}, engine alone`, x, c.engine.p50Ms, undefined, undefined, true);
    if (c.realConnector?.real) add(`${c.case.model}, ${c.realConnector.path}`, x, c.realConnector.real.p50Ms, undefined, undefined, true);
  }
  const xs = [...new Set(r.cases.map((c) => c.case.promptTokens))].sort((a, b) => a - b);
  const first = r.cases[0]?.case;
  const parallel = first ? `prefill tp${first.prefill.tpSize} -> decode tp${first.decode.tpSize}, block ${first.blockSize} tokens` : '';
  return lineChart({
    title: 'KV transfer time per request over TCP loopback (ms, lower is better)',
    xLabel: 'prompt length (tokens)',
    yLabel: 'ms per request (p50)',
    logY: true,
    series: [...series.values()],
    xTicks: xs.map((x) => ({ x, label: tokens(x) })),
    notes: [parallel, `concurrency ${first?.concurrency ?? 1}; bars: min-max of round medians`, 'dashed: baselines'],
  });
}
