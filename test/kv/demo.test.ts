// The examples/pd-disaggregation demo runs as its README says (small sizes), in both modes.
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const demo = path.join(__dirname, '../../examples/pd-disaggregation/demo.mjs');

function run(args: string[], timeoutMs = 90_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [demo, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

describe('PD disaggregation demo', () => {
  for (const mode of ['pull', 'push']) {
    it(`${mode}: every request verified, KV throughput printed, exit 0`, async () => {
      const { code, out } = await run(['--mode', mode, '--requests', '12', '--concurrency', '4', '--prompt-tokens', '256']);
      expect(out).toContain('12 ok, 0 failed');
      expect(out).toContain('12/12 requests');
      expect(out).toContain('0 mismatches, 0 failed blocks');
      expect(out).toMatch(/KV throughput\s+[\d.]+ (MiB|GiB)\/s while transfers were in flight/);
      if (mode === 'pull') {
        expect(out).toContain('through the PD proxy');
        expect(out).toMatch(/holds released \(done 24\), 0 still held/);
      }
      expect(code).toBe(0);
    });
  }
});
