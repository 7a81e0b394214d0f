// `mooncake-node bench` failure paths, run as a user runs the command (dist/cli.js in a child process):
// every failure ends with one coded line on stderr and a non-zero exit within seconds, with nothing left
// running (no target process, no metadata server keeping the process alive) and no raw Node error or stack.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { codedLines, leftovers, rawErrorLines, runCli, startCli, type CliResult } from '../helpers/cli';
import { repoRoot } from '../helpers/upstream';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-bench-fail-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function expectOneCodedFailure(r: CliResult, code: string, message: RegExp): void {
  expect(r.timedOut, `timed out:\n${r.stderr}`).toBe(false);
  expect(r.code).not.toBe(0);
  expect(codedLines(r.stderr), r.stderr).toHaveLength(1);
  const [line] = codedLines(r.stderr);
  expect(line.startsWith(`mooncake-node: [${code}] `), line).toBe(true);
  expect(line).toMatch(message);
  expect(rawErrorLines(r.stderr), r.stderr).toEqual([]);
}

describe('bench: a target that cannot start', () => {
  it('--buffer-size larger than a Buffer is refused before anything starts', async () => {
    const run = startCli(['bench', '--buffer-size', '64G', '--duration', '1'], { timeoutMs: 20_000 });
    const r = await run.done;
    expectOneCodedFailure(r, 'INVALID_CONFIG', /^mooncake-node: \[INVALID_CONFIG\] --buffer-size=68719476736: larger than the biggest Buffer/);
    expect(r.ms).toBeLessThan(10_000);
    expect(await leftovers(run.marker)).toEqual([]);
  });

  it('--managed --buffer-size 64G: the target fails, the initiator reports its code, closes the metadata server and exits', async () => {
    const run = startCli(['bench', '--managed', '--buffer-size', '64G', '--duration', '1'], { timeoutMs: 30_000 });
    const r = await run.done;
    expectOneCodedFailure(r, 'MEMORY', /the bench target failed: size 68719476736 is more than this machine's memory/);
    expect(await leftovers(run.marker)).toEqual([]);
  });

  it('a missing native addon: the target fails with NATIVE_LOAD_FAILED and nothing hangs', async () => {
    // A copy of the package without build/ or prebuilds/ (its dependencies are the checkout's).
    const pkg = path.join(tmp, 'no-addon');
    fs.mkdirSync(pkg);
    fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
    fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(pkg, 'node_modules'));
    const cli = path.join(pkg, 'dist', 'cli.js');
    const loop = startCli(['bench', '--duration', '1'], { cli, timeoutMs: 30_000 });
    const r = await loop.done;
    expectOneCodedFailure(r, 'NATIVE_LOAD_FAILED', /the bench target failed: mooncake-node could not load its native addon\. .*fix: /);
    expect(await leftovers(loop.marker)).toEqual([]);
    // The same failure in the process itself (target mode).
    const alone = await runCli(['bench', '--mode', 'target', '--metadata-server', 'P2PHANDSHAKE'], { cli, timeoutMs: 30_000 });
    expectOneCodedFailure(alone, 'NATIVE_LOAD_FAILED', /^mooncake-node: \[NATIVE_LOAD_FAILED\] mooncake-node could not load its native addon/);
  });

  it('an unreachable metadata server or peer is one coded line, at once', async () => {
    const meta = await runCli(['bench', '--mode', 'initiator', '--metadata-server', 'http://127.0.0.1:9/metadata', '--segment-id', 'x', '--duration', '1'], { timeoutMs: 20_000 });
    expectOneCodedFailure(meta, 'METADATA', /refused the connection/);
    const peer = await runCli(['bench', '--mode', 'initiator', '--metadata-server', 'P2PHANDSHAKE', '--segment-id', '127.0.0.1:9', '--duration', '1'], { timeoutMs: 20_000 });
    expectOneCodedFailure(peer, 'CONNECT_FAILED', /127\.0\.0\.1:9/);
  });

  it('a --sweep file that cannot be written is refused before measuring', async () => {
    const r = await runCli(['bench', '--sweep', '/nonexistent-dir/x.svg'], { timeoutMs: 20_000 });
    expectOneCodedFailure(r, 'INVALID_CONFIG', /--sweep="\/nonexistent-dir\/x\.svg": cannot write into \/nonexistent-dir/);
  });
});

describe('bench: signals', () => {
  async function waitForRun(run: ReturnType<typeof startCli>): Promise<void> {
    // The banner is printed before the target starts; wait until transfers run (the target is up).
    for (let i = 0; i < 300 && !/loopback/.test(run.stderr()); i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 1500));
  }

  for (const [signal, exit] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
    it(`${signal} to the loopback initiator: one coded line, exit ${exit}, the target stopped cleanly`, async () => {
      const run = startCli(['bench', '--duration', '60'], { timeoutMs: 40_000 });
      await waitForRun(run);
      run.child.kill(signal);
      const r = await run.done;
      expect(r.code).toBe(exit);
      expectOneCodedFailure(r, 'ABORT_ERR', new RegExp(`^mooncake-node: \\[ABORT_ERR\\] interrupted by ${signal}$`));
      expect(r.ms).toBeLessThan(30_000);
      expect(await leftovers(run.marker)).toEqual([]);
    });
  }

  it('SIGKILL of the initiator: its target notices the closed pipe and exits by itself', async () => {
    const run = startCli(['bench', '--duration', '60'], { timeoutMs: 40_000 });
    await waitForRun(run);
    run.child.kill('SIGKILL');
    await run.done;
    // The target (same marker) ends on its own, well before the 60 s run would have.
    expect(await leftovers(run.marker, 10_000)).toEqual([]);
  });

  it('a target whose reader went away ends quietly: no EPIPE stack', async () => {
    const { spawn } = await import('node:child_process');
    const { cliPath } = await import('../helpers/cli');
    const child = spawn(process.execPath, [cliPath, 'bench', '--mode', 'target', '--json', '--until-stdin-closes', '--metadata-server', 'P2PHANDSHAKE', '--buffer-size', '32M'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const ready = await new Promise<string>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => resolve(d.toString()));
      child.once('exit', () => reject(new Error(`target exited early: ${err}`)));
    });
    expect(JSON.parse(ready)).toMatchObject({ ready: true });
    child.stdout!.destroy(); // the parent is gone: nobody reads the last line
    child.stdin!.end();
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code).toBe(0);
    expect(err).toBe('');
  });

  it('SIGTERM to a standalone target is its normal stop: exit 0', async () => {
    const run = startCli(['bench', '--mode', 'target', '--metadata-server', 'P2PHANDSHAKE', '--buffer-size', '32M'], { timeoutMs: 20_000 });
    for (let i = 0; i < 500 && !/target ready/.test(run.stderr()); i++) await new Promise((r) => setTimeout(r, 20));
    expect(run.stderr()).toMatch(/target ready/);
    run.child.kill('SIGTERM');
    const r = await run.done;
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/target served \d+ requests/);
    expect(codedLines(r.stderr)).toEqual([]);
  });
});
