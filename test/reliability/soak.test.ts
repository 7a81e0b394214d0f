// A short soak (the 10-minute one is scripts/soak.sh): 4 engine processes move mixed, verified traffic
// for 20 s. Nothing fails or mismatches, every notify arrives, and descriptors and threads stay flat
// once the connections are up. (RSS needs the long run to judge a slope; here it is only bounded.)
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect, it } from 'vitest';

const MiB = 1 << 20;

interface Metric {
  start: number;
  afterWarmup: number;
  end: number;
  settledEnd?: number;
  max: number;
  slopePerMin: number;
}
interface Report {
  durationS: number;
  processes: { name: string; rss: Metric; fds: Metric; threads: Metric }[];
  totals: { transfers: number; mismatches: number; errors: Record<string, number>; notifiesSent: number; notifiesReceived: number; notifiesLost: number; segmentReopens: number; regionsRegistered: number; regionsUnregistered: number };
  problems: string[];
}

it('20 s of mixed traffic among 4 processes: no error, no mismatch, descriptors and threads flat', async () => {
  const json = path.join(os.tmpdir(), `mooncake-soak-${process.pid}.json`);
  // A pause between rounds keeps the 4 processes from hogging the 2 cores other suites share.
  const args = [path.join(__dirname, 'soak.cjs'), '--duration', '20', '--sample', '1', '--max-size', String(256 * 1024), '--pause', '5', '--max-rss-slope', '1000000', '--json', json, '--quiet'];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.once('exit', (c) => {
      clearTimeout(t);
      resolve(c);
    });
  });
  console.log(out);
  expect(code, out).toBe(0);
  const r = JSON.parse(fs.readFileSync(json, 'utf8')) as Report;
  fs.rmSync(json, { force: true });
  expect(r.problems).toEqual([]);
  expect(r.totals.mismatches).toBe(0);
  expect(r.totals.errors).toEqual({});
  expect(r.totals.transfers).toBeGreaterThan(1000);
  expect(r.totals.notifiesReceived).toBe(r.totals.notifiesSent);
  expect(r.totals.notifiesLost).toBe(0); // each acknowledged notify, checked by name and message
  expect(r.totals.notifiesSent).toBeGreaterThan(0);
  expect(r.totals.segmentReopens).toBeGreaterThan(0);
  expect(r.totals.regionsUnregistered).toBe(r.totals.regionsRegistered);
  for (const p of r.processes) {
    expect(p.fds.end, `${p.name} descriptors`).toBeLessThanOrEqual(p.fds.afterWarmup + 2);
    expect(p.threads.end, `${p.name} threads`).toBeLessThanOrEqual(p.threads.afterWarmup + 1);
    expect(p.rss.settledEnd! - p.rss.start, `${p.name} RSS`).toBeLessThan(160 * MiB);
  }
}, 120_000);
