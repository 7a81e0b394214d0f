// The registry: the text format, merging and labels, and the prom-client bridge (a real prom-client
// registry scraping our families next to its own), plus the error when prom-client is not installed.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import client from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { MetricsRegistry, type MetricFamily, type MetricsSource } from '../../lib';
import { parseText, value } from './helpers';

const source = (families: () => MetricFamily[]): MetricsSource => ({ collectMetrics: families });

let bytes = 0;
const fake = source(() => [
  { name: 'demo_bytes_total', help: 'Bytes.\nSecond line \\ end', type: 'counter', samples: [{ labels: { peer: 'a "quoted"\\ name\n' }, value: bytes }] },
  { name: 'demo_queue', help: 'Depth.', type: 'gauge', samples: [{ value: 2.5 }] },
  { name: 'demo_seconds', help: 'Latency.', type: 'histogram', samples: [{ labels: { op: 'read' }, bounds: [0.1, 1], counts: [3, 1, 2], sum: 9.5 }] },
]);

describe('MetricsRegistry', () => {
  it('writes the Prometheus text format: escaped help and labels, cumulative buckets, +Inf and count', () => {
    bytes = 42;
    const text = new MetricsRegistry().register(fake).metrics();
    expect(text).toContain('# HELP demo_bytes_total Bytes.\\nSecond line \\\\ end\n# TYPE demo_bytes_total counter\n');
    expect(text).toContain('demo_bytes_total{peer="a \\"quoted\\"\\\\ name\\n"} 42\n');
    expect(text).toContain('demo_queue 2.5\n');
    const s = parseText(text);
    expect(value(s, 'demo_seconds_bucket', { le: '0.1' })).toBe(3);
    expect(value(s, 'demo_seconds_bucket', { le: '1' })).toBe(4);
    expect(value(s, 'demo_seconds_bucket', { le: '+Inf' })).toBe(6);
    expect(value(s, 'demo_seconds_count')).toBe(6);
    expect(value(s, 'demo_seconds_sum')).toBe(9.5);
    expect(text.endsWith('\n')).toBe(true);
  });

  it('merges same-named families of several sources, with registry and per-source labels', () => {
    const other = source(() => fake.collectMetrics());
    const reg = new MetricsRegistry({ labels: { node: 'n1' } }).register(fake, { labels: { rank: '0' } }).register(other, { labels: { rank: '1' } });
    const text = reg.metrics();
    expect(text.match(/# TYPE demo_queue gauge/g)).toHaveLength(1);
    const s = parseText(text);
    expect(value(s, 'demo_queue', { node: 'n1', rank: '0' })).toBe(2.5);
    expect(value(s, 'demo_queue', { node: 'n1', rank: '1' })).toBe(2.5);
    expect(reg.unregister(other)).toBe(true);
    expect(() => value(parseText(reg.metrics()), 'demo_queue', { rank: '1' })).toThrow();
    expect(() => reg.register({} as MetricsSource)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
  });

  describe('prom-client bridge', () => {
    const registries: { clear(): void }[] = [];
    afterAll(() => {
      for (const r of registries) r.clear();
    });

    it('a prom-client registry scrapes our families beside its own, current at every scrape', async () => {
      const prom = new client.Registry();
      registries.push(prom);
      const mine = new client.Counter({ name: 'app_requests_total', help: 'App requests.', registers: [prom] });
      mine.inc(3);
      const ours = new MetricsRegistry().register(fake).registerWith(prom);
      bytes = 100;
      const first = parseText(await prom.metrics());
      expect(value(first, 'app_requests_total')).toBe(3);
      expect(value(first, 'demo_bytes_total')).toBe(100);
      expect(value(first, 'demo_seconds_bucket', { op: 'read', le: '+Inf' })).toBe(6);
      expect(value(first, 'demo_seconds_count', { op: 'read' })).toBe(6);
      bytes = 250;
      expect(value(parseText(await prom.metrics()), 'demo_bytes_total')).toBe(250);
      // The same series as our own exposition.
      for (const k of parseText(ours.metrics()).keys()) expect(first.has(k), k).toBe(true);
      // JSON view and resetMetrics() work (reset leaves our counters to their owners).
      const json = await prom.getMetricsAsJSON();
      expect(json.find((m) => m.name === 'demo_queue')).toMatchObject({ type: 'gauge', values: [{ value: 2.5 }] });
      prom.resetMetrics();
      expect(value(parseText(await prom.metrics()), 'demo_bytes_total')).toBe(250);
      // Sources registered later are bridged too; unregisterFrom takes everything out again.
      ours.register(source(() => [{ name: 'demo_late', help: 'Late.', type: 'gauge', samples: [{ value: 7 }] }]));
      expect(value(parseText(await prom.metrics()), 'demo_late')).toBe(7);
      ours.unregisterFrom(prom);
      expect(await prom.metrics()).not.toContain('demo_');
    });

    it('works with an OpenMetrics registry and with prom-client default labels', async () => {
      const prom = new client.Registry<typeof client.openMetricsContentType>();
      prom.setContentType(client.openMetricsContentType);
      registries.push(prom);
      prom.setDefaultLabels({ service: 'pd' });
      new MetricsRegistry().register(fake).registerWith(prom);
      const text = await prom.metrics();
      expect(text).toContain('# TYPE demo_bytes counter');
      expect(text).toMatch(/^demo_bytes_total\{peer="[^\n]*",service="pd"\} 250$/m);
      expect(text.endsWith('# EOF\n')).toBe(true);
    });

    it('a name taken in the prom-client registry is refused with a code', () => {
      const prom = new client.Registry();
      registries.push(prom);
      new client.Gauge({ name: 'demo_queue', help: 'taken', registers: [prom] });
      expect(() => new MetricsRegistry().register(fake).registerWith(prom)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
      expect(() => new MetricsRegistry().registerWith({} as client.Registry)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
    });

    it('registerWith() without a registry uses prom-client\'s global register', async () => {
      new MetricsRegistry().register(source(() => [{ name: 'demo_global', help: 'G.', type: 'gauge', samples: [{ value: 1 }] }])).registerWith();
      expect(value(parseText(await client.register.metrics()), 'demo_global')).toBe(1);
      client.register.removeSingleMetric('demo_global');
    });
  });

  it('without prom-client installed, registerWith() says what to install (MISSING_DEPENDENCY); the text exposition works', () => {
    // The built package in a directory where prom-client cannot be resolved.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-noprom-'));
    try {
      const dist = path.resolve(__dirname, '../../dist');
      fs.cpSync(dist, path.join(dir, 'dist'), { recursive: true });
      const script = `
        const { MetricsRegistry } = require('./dist/metrics');
        const reg = new MetricsRegistry().register({ collectMetrics: () => [{ name: 'x_total', help: 'X.', type: 'counter', samples: [{ value: 1 }] }] });
        let code;
        try { reg.registerWith(); } catch (e) { code = e.code + ' ' + e.message; }
        console.log(JSON.stringify({ text: reg.metrics(), code }));`;
      const r = spawnSync(process.execPath, ['-e', script], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { text: string; code: string };
      expect(out.text).toContain('x_total 1\n');
      expect(out.code).toMatch(/^MISSING_DEPENDENCY .*npm install prom-client/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
