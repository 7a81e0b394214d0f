import type { CompareResult } from './report';
import type { BenchOptions } from './options';
import { formatBytes, rateIn } from './report';

/** A point, with an optional min-max bar (repeated runs). */
export interface ChartPoint {
  x: number;
  y: number;
  lo?: number;
  hi?: number;
}

export interface ChartSeries {
  name: string;
  points: ChartPoint[];
  color?: string;
  /** Dashed (true) or an SVG dash pattern, e.g. '2 3' for dotted. */
  dashed?: boolean | string;
}

export interface LineChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: ChartSeries[];
  /** Labels under the x axis (x is drawn on a log2 scale). */
  xTicks: { x: number; label: string }[];
  /** Log10 y axis (times spanning decades); linear from 0 otherwise. */
  logY?: boolean;
  /** Small print at the bottom of the legend. */
  notes?: string[];
}

const COLORS = ['#d9480f', '#1971c2', '#2b8a3e', '#862e9c', '#868e96', '#e67700', '#0b7285'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceLogTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  return out;
}

/** 1, 2, 2.5 or 5 times a power of ten, at least `raw`. */
function niceStep(raw: number): number {
  const p = 10 ** Math.floor(Math.log10(raw));
  return ([1, 2, 2.5, 5, 10].find((m) => m * p >= raw) ?? 10) * p;
}

function tickLabel(v: number): string {
  return v === 0 ? '0' : v >= 100 ? v.toFixed(0) : v >= 1 ? String(Number(v.toFixed(1))) : String(Number(v.toPrecision(2)));
}

/** A self-contained SVG line chart: log2 x, linear or log10 y, min-max bars where points have them. */
export function lineChart(spec: LineChartSpec): string {
  const R = 20 + 7 * Math.max(24, ...spec.series.map((x) => x.name.length), ...(spec.notes ?? []).map((n) => Math.ceil(n.length * 0.85)));
  const W = 530 + R, H = Math.max(440, 120 + 22 * spec.series.length + 15 * (spec.notes?.length ?? 0)), L = 70, T = 44, B = 60;
  const pts = spec.series.flatMap((s) => s.points);
  const xs = [...new Set(spec.xTicks.map((t) => t.x).concat(pts.map((p) => p.x)))].sort((a, b) => a - b);
  const ys = pts.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]).filter((y) => y > 0);
  const linearStep = niceStep(Math.max(...ys, 0.5) * 1.05 / 5);
  const maxY = spec.logY ? Math.max(...ys, 1) * 1.3 : Math.ceil((Math.max(...ys, 0.5) * 1.05) / linearStep) * linearStep;
  const minY = spec.logY ? Math.min(...ys, maxY) / 1.3 : 0;
  const x0 = Math.log2(xs[0]);
  const x1 = Math.log2(xs[xs.length - 1]);
  const lx = (x: number) => L + ((Math.log2(x) - x0) / Math.max(1, x1 - x0)) * (W - L - R);
  const ly = (y: number) =>
    spec.logY ? T + (1 - (Math.log10(y) - Math.log10(minY)) / Math.max(1e-9, Math.log10(maxY) - Math.log10(minY))) * (H - T - B) : T + (1 - y / maxY) * (H - T - B);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${L}" y="24" font-size="15" font-weight="bold">${esc(spec.title)}</text>`);
  const yTicks = spec.logY ? niceLogTicks(minY, maxY) : Array.from({ length: Math.round(maxY / linearStep) + 1 }, (_, i) => i * linearStep);
  for (const y of yTicks) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${ly(y).toFixed(1)}" y2="${ly(y).toFixed(1)}" stroke="#e9ecef"/>`);
    parts.push(`<text x="${L - 8}" y="${(ly(y) + 4).toFixed(1)}" text-anchor="end">${tickLabel(y)}</text>`);
  }
  for (const t of spec.xTicks) parts.push(`<text x="${lx(t.x).toFixed(1)}" y="${H - B + 18}" text-anchor="middle">${esc(t.label)}</text>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 18}" text-anchor="middle">${esc(spec.xLabel)}</text>`);
  parts.push(`<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">${esc(spec.yLabel)}</text>`);
  spec.series.forEach((s, i) => {
    const c = s.color ?? COLORS[i % COLORS.length];
    const dash = s.dashed ? ` stroke-dasharray="${typeof s.dashed === 'string' ? s.dashed : '6 4'}"` : '';
    const ok = s.points.filter((p) => p.y > 0 || !spec.logY);
    if (ok.length > 1) parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2.5"${dash} points="${ok.map((p) => `${lx(p.x).toFixed(1)},${ly(p.y).toFixed(1)}`).join(' ')}"/>`);
    for (const p of ok) {
      if (p.lo !== undefined && p.hi !== undefined && p.hi > p.lo) {
        const x = lx(p.x).toFixed(1);
        parts.push(`<line x1="${x}" x2="${x}" y1="${ly(p.lo).toFixed(1)}" y2="${ly(p.hi).toFixed(1)}" stroke="${c}" stroke-width="1.5"/>`);
        for (const y of [p.lo, p.hi]) parts.push(`<line x1="${lx(p.x) - 4}" x2="${lx(p.x) + 4}" y1="${ly(y).toFixed(1)}" y2="${ly(y).toFixed(1)}" stroke="${c}" stroke-width="1.5"/>`);
      }
      parts.push(`<circle cx="${lx(p.x).toFixed(1)}" cy="${ly(p.y).toFixed(1)}" r="3.5" fill="${c}"/>`);
    }
    parts.push(`<line x1="${W - R + 18}" x2="${W - R + 36}" y1="${T + 12 + i * 22}" y2="${T + 12 + i * 22}" stroke="${c}" stroke-width="3"${dash}/>`);
    parts.push(`<text x="${W - R + 42}" y="${T + 16 + i * 22}">${esc(s.name)}</text>`);
  });
  (spec.notes ?? []).forEach((n, i, all) => parts.push(`<text x="${W - R + 18}" y="${H - B - (all.length - 1 - i) * 15}" fill="#868e96" font-size="11">${esc(n)}</text>`));
  parts.push('</svg>');
  return parts.join('\n');
}

/** `bench --sweep`: GB/s against block size, one line per implementation, min-max bars from repeated runs. */
export function sweepChart(results: CompareResult[], o: BenchOptions): string {
  const series: ChartSeries[] = [
    { name: 'mooncake-node', points: [] },
    { name: 'upstream (best mode)', points: [] },
    { name: 'raw TCP (best reference)', points: [], color: '#868e96', dashed: true },
    { name: 'memcpy, 1 core (loopback limit)', points: [], color: '#adb5bd', dashed: '2 3' },
  ];
  const point = (x: number, runs: number[]): ChartPoint => {
    const s = [...runs].sort((a, b) => a - b);
    return { x, y: rateIn(s[s.length >> 1]), lo: rateIn(s[0]), hi: rateIn(s[s.length - 1]) };
  };
  for (const c of results) {
    series[0].points.push(point(c.blockSize, c.runs.map((r) => r.node.bandwidth)));
    const up = c.runs.map((r) => (r.upstream.length ? Math.max(...r.upstream.map((u) => u.bandwidth)) : 0)).filter((b) => b > 0);
    if (up.length > 0) series[1].points.push(point(c.blockSize, up));
    series[2].points.push(point(c.blockSize, c.runs.map((r) => Math.max(...r.raw.map((x) => x.bandwidth)))));
    const memcpy = c.runs.map((r) => r.memcpy?.bandwidth ?? 0).filter((b) => b > 0);
    if (memcpy.length > 0) series[3].points.push(point(c.blockSize, memcpy));
  }
  const repeats = results[0]?.runs.length ?? 1;
  return lineChart({
    title: `${o.operation} throughput over TCP loopback (GB/s, higher is better)`,
    xLabel: 'block size',
    yLabel: 'GB/s',
    series: series.filter((s) => s.points.length > 0),
    xTicks: results.map((c) => ({ x: c.blockSize, label: formatBytes(c.blockSize) })),
    notes: [`${results[0]?.node.concurrency ?? o.concurrency} batches in flight`, `median of ${repeats} run${repeats === 1 ? '' : 's'}${repeats > 1 ? ', bars min-max' : ''}`],
  });
}
