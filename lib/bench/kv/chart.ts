/** `bench kv --chart`: time per request against prompt length, one line per model and transfer mode. */
import { lineChart, type ChartSeries } from '../chart';
import type { KvBenchResult } from './result';

function tokens(n: number): string {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n);
}

const MODEL_COLORS = ['#d9480f', '#1971c2', '#2b8a3e', '#862e9c', '#e67700', '#0b7285'];

/** One color per model; the KV layer solid, the bare engine dashed, the real connector dotted. */
export function kvChart(r: KvBenchResult): string {
  const series = new Map<string, ChartSeries>();
  const colors = new Map<string, string>();
  const colorOf = (model: string) => {
    if (!colors.has(model)) colors.set(model, MODEL_COLORS[colors.size % MODEL_COLORS.length]);
    return colors.get(model)!;
  };
  const add = (name: string, model: string, x: number, y: number, dashed: boolean | string, lo?: number, hi?: number) => {
    if (!series.has(name)) series.set(name, { name, points: [], dashed, color: colorOf(model) });
    series.get(name)!.points.push({ x, y, lo, hi });
  };
  for (const c of r.cases) {
    const m = c.case.model;
    const x = c.case.promptTokens;
    // Per-round medians give the bar: how much the rounds disagreed.
    const rounds = c.rounds.map((q) => q.kvP50Ms);
    add(`${m} ${c.case.transfer}`, m, x, c.kv.p50Ms, false, Math.min(...rounds), Math.max(...rounds));
    if (c.engine && c.case.transfer !== 'layerwise') add(`${m} ${c.case.transfer}, engine alone`, m, x, c.engine.p50Ms, true);
    if (c.realConnector?.real) add(`${m}, ${c.realConnector.path}`, m, x, c.realConnector.real.p50Ms, '2 3');
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
    notes: [parallel, `concurrency ${first?.concurrency ?? 1}; bars: min-max of round medians`, 'solid: KV layer; dashed: bare engine,', 'same ranges; dotted: real connector'],
  });
}
