/**
 * The Prometheus text exposition format (version 0.0.4): the one writer of it in the package.
 */
import type { Labels, MetricFamily } from './types';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const escLabel = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const escHelp = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

/** A number as Prometheus writes it (`+Inf`, integers without a fraction). */
export function formatValue(n: number): string {
  if (n === Infinity) return '+Inf';
  if (n === -Infinity) return '-Inf';
  if (Number.isNaN(n)) return 'NaN';
  return Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(15)));
}

function labelText(labels: Labels | undefined, le?: string): string {
  const parts: string[] = [];
  if (labels) for (const [k, v] of Object.entries(labels)) parts.push(`${k}="${escLabel(v)}"`);
  if (le !== undefined) parts.push(`le="${le}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/** Families with the same name (from several sources) are written as one, in first-seen order. */
export function mergeFamilies(families: readonly MetricFamily[]): MetricFamily[] {
  const byName = new Map<string, MetricFamily>();
  for (const f of families) {
    const seen = byName.get(f.name);
    if (seen === undefined) byName.set(f.name, f);
    else if (seen.type === f.type) byName.set(f.name, { ...seen, samples: [...seen.samples, ...f.samples] } as MetricFamily);
  }
  return [...byName.values()];
}

export function renderText(families: readonly MetricFamily[]): string {
  const out: string[] = [];
  for (const f of mergeFamilies(families)) {
    out.push(`# HELP ${f.name} ${escHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    if (f.type !== 'histogram') {
      for (const s of f.samples) out.push(`${f.name}${labelText(s.labels)} ${formatValue(s.value)}`);
      continue;
    }
    for (const s of f.samples) {
      let cumulative = 0;
      for (let i = 0; i < s.bounds.length; i++) {
        cumulative += s.counts[i];
        out.push(`${f.name}_bucket${labelText(s.labels, formatValue(s.bounds[i]))} ${cumulative}`);
      }
      cumulative += s.counts[s.bounds.length] ?? 0;
      out.push(`${f.name}_bucket${labelText(s.labels, '+Inf')} ${cumulative}`);
      out.push(`${f.name}_sum${labelText(s.labels)} ${formatValue(s.sum)}`, `${f.name}_count${labelText(s.labels)} ${cumulative}`);
    }
  }
  return out.length === 0 ? '' : out.join('\n') + '\n';
}
