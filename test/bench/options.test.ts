// `mooncake-node bench` flags: upstream transfer_engine_bench's command lines mean the same here, its rate
// units are its units, and the command runs from the built CLI with --version and one-line errors.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseBenchArgs } from '../../lib/bench/options';
import { REPORT_UNITS, rateIn } from '../../lib/bench/report';
import { MooncakeError } from '../../lib/errors';
import { codedLines, runCli } from '../helpers/cli';
import { repoRoot } from '../helpers/upstream';

describe('bench flags', () => {
  it("upstream's spellings give the same options as ours", () => {
    const upstream = parseBenchArgs([
      '--mode=initiator', '--metadata_server=http://10.0.0.1:8080/metadata', '--segment_id=10.0.0.2:12345',
      '--local_server_name=10.0.0.3:12346', '--protocol=tcp', '--operation=read', '--block_size=65536',
      '--batch_size=32', '--threads=4', '--duration=10', '--buffer_size=1073741824', '--report_unit=Gb',
      '--report_precision=3', '--device_name=mlx5_2', '--auto_discovery=false', '--backend=classic',
    ]);
    const ours = parseBenchArgs([
      '--mode', 'initiator', '--metadata-server', 'http://10.0.0.1:8080/metadata', '--segment-id', '10.0.0.2:12345',
      '--local-server-name', '10.0.0.3:12346', '--operation', 'read', '--block-size', '64K', '--batch-size', '32',
      '--concurrency', '4', '--duration', '10', '--buffer-size', '1G', '--report-unit', 'Gb', '--report-precision', '3',
    ]);
    expect(upstream).toEqual(ours);
    expect(ours).toMatchObject({ blockSize: 65536, concurrency: 4, bufferSize: 2 ** 30, reportUnit: 'Gb', reportPrecision: 3 });
  });

  it('refuses what the built-in backend cannot do, with a code', () => {
    const code = (argv: string[]): string | undefined => {
      try {
        parseBenchArgs(argv);
      } catch (e) {
        return (e as MooncakeError).code;
      }
      return undefined;
    };
    expect(code(['--protocol', 'rdma'])).toBe('NOT_SUPPORTED_TRANSPORT');
    expect(code(['--backend', 'tent'])).toBe('NOT_SUPPORTED_TRANSPORT');
    expect(code(['--report-unit', 'TB'])).toBe('INVALID_CONFIG');
    expect(code(['--mode', 'initiator'])).toBe('INVALID_CONFIG'); // needs --metadata-server and --segment-id
    expect(code(['--compare', '--mode', 'target', '--metadata-server', 'P2PHANDSHAKE'])).toBe('INVALID_CONFIG');
    expect(code(['--block-size', '1M', '--buffer-size', '2M'])).toBe('INVALID_CONFIG');
  });

  it("rates are in upstream's units (GB = 1e9 bytes, Gb = 1e9 bits, KiB = 1024 bytes)", () => {
    expect(Object.keys(REPORT_UNITS)).toEqual(['GB', 'GiB', 'Gb', 'MB', 'MiB', 'Mb', 'KB', 'KiB', 'Kb']);
    expect(rateIn(2e9, 'GB')).toBe(2);
    expect(rateIn(2e9, 'Gb')).toBe(16);
    expect(rateIn(2 ** 30, 'GiB')).toBe(1);
    expect(rateIn(1e6, 'Mb')).toBe(8);
    expect(rateIn(2048, 'KiB')).toBe(2);
    expect(rateIn(1000, 'Kb')).toBe(8);
  });
});

describe('the mooncake-node command', () => {
  it('--version prints the package version', async () => {
    const { version } = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    const r = await runCli(['--version'], { timeoutMs: 20_000 });
    expect(r).toMatchObject({ code: 0, stdout: `mooncake-node ${version}\n`, stderr: '' });
  });

  it('bad input to any command is one coded line, no usage dump, exit 1', async () => {
    const cases: [string[], RegExp][] = [
      [['bench', '--json=yes'], /^mooncake-node: \[INVALID_CONFIG\] --json="yes": a switch/],
      [['bench', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'bench'/],
      [['metadata-server', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'metadata-server'/],
      [['proxy', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'proxy'/],
      [['proxy-bench', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'proxy-bench'/],
      [['setup-upstream', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'setup-upstream'/],
      [['doctor', '--json=yes'], /^mooncake-node: \[INVALID_CONFIG\] --json="yes": a switch/],
      [['proxy', '--port', 'x'], /^mooncake-node: \[INVALID_CONFIG\] --port="x": expected an integer$/],
      [['nope'], /^mooncake-node: \[INVALID_CONFIG\] "nope": unknown command/],
    ];
    for (const [argv, re] of cases) {
      const r = await runCli(argv, { timeoutMs: 20_000 });
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.trimEnd().split('\n'), argv.join(' ')).toHaveLength(1);
      expect(codedLines(r.stderr)[0]).toMatch(re);
    }
  });

  it('every command answers --help on stdout', async () => {
    for (const cmd of ['bench', 'metadata-server', 'proxy', 'proxy-bench', 'doctor', 'setup-upstream']) {
      const r = await runCli([cmd, '--help'], { timeoutMs: 20_000 });
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: mooncake-node ${cmd} `));
      expect(r.stdout).toContain('-h, --help');
    }
  });
});
