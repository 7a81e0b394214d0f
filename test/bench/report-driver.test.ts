// scripts/bench-report.mjs: runs the benchmarks (here --quick, the KV part) and rewrites the README's and
// docs/bench.md's tables between their markers from the runs' JSON; --render-only rewrites from saved JSON.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers/upstream';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-bench-report-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function driver(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'scripts', 'bench-report.mjs'), ...args], { encoding: 'utf8', timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('bench-report driver', () => {
  it('--quick --only kv: runs, saves the JSON, writes the KV tables and the chart between the markers', () => {
    fs.copyFileSync(path.join(repoRoot, 'README.md'), path.join(tmp, 'README.md'));
    fs.copyFileSync(path.join(repoRoot, 'docs', 'bench.md'), path.join(tmp, 'bench.md'));
    const r = driver(['--quick', '--only', 'kv', '--out', tmp, '--readme', path.join(tmp, 'README.md')]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toMatch(/bench-report: load average [\d.]+ /);
    const saved = JSON.parse(fs.readFileSync(path.join(tmp, 'bench-results.json'), 'utf8'));
    expect(Object.keys(saved.kv.runs)).toEqual(['pull', 'push', 'tp2to1', 'tp4to2']);
    expect(saved.kv.loadBefore).toHaveLength(3);
    const readme = fs.readFileSync(path.join(tmp, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('<!-- bench-report:kv -->'), readme.indexOf('<!-- /bench-report:kv -->'));
    expect(section).toContain('**--quick**');
    expect(section).toMatch(/\| deepseek-v2-lite \| 64 \|/);
    expect(section).toMatch(/Layerwise push, llama3-8b 64/);
    // The block table was not measured: its section is left as it was.
    const section_ = (t: string, name: string) => t.slice(t.indexOf(`<!-- bench-report:${name} -->`), t.indexOf(`<!-- /bench-report:${name} -->`));
    expect(section_(readme, 'block')).toBe(section_(fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8'), 'block'));
    const bench = fs.readFileSync(path.join(tmp, 'bench.md'), 'utf8');
    expect(bench).toMatch(/\| llama3-8b \| 64 \| tp4→tp2 \| push \|/);
    expect(fs.readFileSync(path.join(tmp, 'bench-kv.svg'), 'utf8')).toMatch(/^<svg /);
    expect(r.stdout).toMatch(/KV \/ engine [\d.]+x/);

    // --render-only: the same tables again from the saved JSON, nothing measured.
    fs.copyFileSync(path.join(repoRoot, 'README.md'), path.join(tmp, 'README.md'));
    const again = driver(['--render-only', '--out', tmp, '--readme', path.join(tmp, 'README.md')]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toContain('$ mooncake-node');
    expect(fs.readFileSync(path.join(tmp, 'README.md'), 'utf8')).toBe(readme);
  }, 260_000);
});
