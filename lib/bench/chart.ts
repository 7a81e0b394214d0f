import type { CompareResult } from './compare';
import type { BenchOptions } from './options';
import { formatBytes, rateIn } from './report';

/** A small self-contained SVG line chart: GB/s against block size (log scale), one line per implementation. */
export function sweepChart(results: CompareResult[], o: BenchOptions): string {
  const W = 760, H = 420, L = 70, R = 230, T = 40, B = 60;
  const series = new Map<string, { x: number; y: number }[]>();
  const add = (name: string, x: number, y: number) => {
    if (!series.has(name)) series.set(name, []);
    series.get(name)!.push({ x, y });
  };
  for (const c of results) {
    add('mooncake-node', c.blockSize, rateIn(c.node.bandwidth));
    const up = c.upstream.length ? Math.max(...c.upstream.map((r) => r.bandwidth)) : undefined;
    if (up !== undefined) add('upstream (best mode)', c.blockSize, rateIn(up));
    add('raw TCP (best of 1/N streams)', c.blockSize, rateIn(Math.max(...c.raw.map((r) => r.bandwidth))));
  }
  const xs = results.map((r) => r.blockSize);
  const maxY = Math.max(0.5, ...[...series.values()].flat().map((p) => p.y)) * 1.1;
  const lx = (x: number) => L + ((Math.log2(x) - Math.log2(xs[0])) / Math.max(1, Math.log2(xs[xs.length - 1]) - Math.log2(xs[0]))) * (W - L - R);
  const ly = (y: number) => T + (1 - y / maxY) * (H - T - B);
  const colors = ['#d9480f', '#1971c2', '#868e96'];
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${L}" y="22" font-size="15" font-weight="bold">${o.operation} throughput over TCP loopback (GB/s, higher is better)</text>`);
  for (let i = 0; i <= 5; i++) {
    const y = (maxY / 5) * i;
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${ly(y)}" y2="${ly(y)}" stroke="#e9ecef"/>`);
    parts.push(`<text x="${L - 8}" y="${ly(y) + 4}" text-anchor="end">${y.toFixed(1)}</text>`);
  }
  for (const x of xs) parts.push(`<text x="${lx(x)}" y="${H - B + 18}" text-anchor="middle">${formatBytes(x)}</text>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 18}" text-anchor="middle">block size</text>`);
  let i = 0;
  for (const [name, pts] of series) {
    const c = colors[i % colors.length];
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2.5" points="${pts.map((p) => `${lx(p.x).toFixed(1)},${ly(p.y).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) parts.push(`<circle cx="${lx(p.x).toFixed(1)}" cy="${ly(p.y).toFixed(1)}" r="3.5" fill="${c}"/>`);
    parts.push(`<rect x="${W - R + 20}" y="${T + 10 + i * 22}" width="14" height="4" fill="${c}"/>`);
    parts.push(`<text x="${W - R + 40}" y="${T + 16 + i * 22}">${name}</text>`);
    i++;
  }
  parts.push(`<text x="${W - R + 20}" y="${H - B}" fill="#868e96" font-size="11">${results[0]?.node.concurrency} batches in flight</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}
