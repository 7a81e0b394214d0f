/** `bench kv`'s text report: one table row per case, then the ratios the targets are stated in. */
import type { KvBenchResult, KvCaseResult } from './result';

function f(n: number | undefined, digits = 2): string {
  return n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits);
}

function tokens(n: number): string {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n);
}

function parallel(c: KvCaseResult['case']): string {
  const side = (p: { dpSize: number; tpSize: number }) => `${p.dpSize > 1 ? `dp${p.dpSize}x` : ''}tp${p.tpSize}`;
  return `${side(c.prefill)}->${side(c.decode)}`;
}

export function kvTable(r: KvBenchResult): string {
  const head = ['model', 'tokens', 'P->D', 'transfer', 'MiB/req', 'ranges', 'p50 ms', 'p99 ms', 'GB/s', 'engine p50', 'x engine', 'loop p99', 'cpu ms/req', 'engine cpu', 'target cpu'];
  const rows = r.cases.map((c) => [
    c.case.model,
    tokens(c.case.promptTokens),
    parallel(c.case),
    c.case.transfer,
    f(c.bytesPerRequest / 2 ** 20, 1),
    String(c.rangesPerRequest),
    f(c.kv.p50Ms),
    f(c.kv.p99Ms),
    c.case.transfer === 'layerwise' ? '-' : f(c.kv.gbps),
    f(c.engine?.p50Ms),
    f(c.overhead?.ratio, 3),
    f(c.kv.loopDelayP99Ms),
    f(c.kv.cpuMsPerRequest),
    f(c.engine?.cpuMsPerRequest),
    f(c.kv.targetCpuMsPerRequest),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i].length)));
  const line = (cells: string[]) => cells.map((x, i) => (i < 4 ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const mark = (ok: boolean | undefined) => (ok === undefined ? '' : ok ? 'met' : 'NOT met');

/** The lines under the table: each case's ratios against its targets. */
export function kvRatioLines(r: KvBenchResult): string[] {
  const out: string[] = [];
  for (const c of r.cases) {
    const name = `${c.case.model} ${tokens(c.case.promptTokens)} ${parallel(c.case)} ${c.case.transfer}`;
    if (c.overhead) {
      out.push(`${name}: KV layer ${f(c.kv.p50Ms)} ms vs engine ${f(c.engine?.p50Ms)} ms on the same ${c.rangesPerRequest} ranges = ${f(c.overhead.ratio, 3)}x (rounds ${c.rounds.map((x) => f(x.ratio, 3)).join(', ')}; target <= ${c.overhead.targetMax}x: ${mark(c.overhead.met)})`);
    }
    if (c.layerwise) {
      const lw = c.layerwise;
      out.push(`${name}: layers computed ${f(lw.computeMs, 1)} ms each; KV complete ${f(lw.tailP50Ms)} ms (p99 ${f(lw.tailP99Ms)}) after the last layer, one layer through the engine ${f(lw.oneLayerEngineP50Ms)} ms = ${f(lw.tailRatio)}x (target <= 1x: ${mark(lw.met)}); the whole request after compute would take ${f(c.engine?.p50Ms)} ms`);
    }
    const v = c.realConnector;
    if (v) {
      if (v.skipReason) out.push(`${name}: ${v.path ?? 'real connector'} baseline skipped: ${v.skipReason}`);
      else {
        const target = v.targetMin ? ` (target >= ${v.targetMin}x: ${mark(v.met)})` : '';
        out.push(`${name}: ${v.path} (vllm-ascend ${v.version}) p50 ${f(v.real?.p50Ms)} ms vs mooncake-node ${f(v.node?.p50Ms)} ms on its side channel = ${f(v.speedup)}x faster${target}`);
      }
    }
    const loop = Math.max(c.kv.loopDelayP99Ms, c.kv.target?.loopDelayP99Ms ?? 0);
    out.push(`${name}: event-loop delay p99 ${f(c.kv.loopDelayP99Ms)} ms here, ${f(c.kv.target?.loopDelayP99Ms)} ms in the target (target < 10 ms: ${mark(loop < 10)}); ${c.verified.bytes} bytes verified`);
  }
  return out;
}
