// The one flag parser and the command registry: spellings, strictness, the error style, help, nesting.
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CommandRegistry, defineCommand, errorLine } from '../../lib/cli/command';
import { parseFlags, parseSize, type FlagSpecs } from '../../lib/cli/flags';
import { MooncakeError } from '../../lib/errors';

const SPECS = {
  'block-size': { type: 'size', default: 65536, help: 'bytes' },
  concurrency: { type: 'int', aliases: ['threads'], min: 1, max: 64, default: 4, help: 'in flight' },
  duration: { type: 'number', min: 0.001, help: 'seconds' },
  mode: { type: 'string', choices: ['a', 'b'], default: 'a', help: 'mode' },
  json: { type: 'boolean', help: 'json' },
  'same-host': { type: 'boolean', negatable: true, default: true, help: 'never same host' },
  hosts: { type: 'list', help: 'hosts' },
  name: { type: 'string', help: 'name' },
} as const satisfies FlagSpecs;

function configError(f: () => unknown): MooncakeError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(MooncakeError);
    expect((e as MooncakeError).code).toBe('INVALID_CONFIG');
    return e as MooncakeError;
  }
  throw new Error('expected INVALID_CONFIG');
}

describe('parseFlags', () => {
  it('applies defaults and takes every spelling of a flag', () => {
    expect(parseFlags(SPECS, []).values).toEqual({ 'block-size': 65536, concurrency: 4, mode: 'a', 'same-host': true });
    for (const argv of [
      ['--block-size', '1M', '--threads', '8'],
      ['--block-size=1M', '--concurrency=8'],
      ['--block_size=1M', '--threads=8'], // upstream's gflags spelling
      ['-block_size=1048576', '-threads', '8'], // gflags' single dash
    ]) {
      const { values, given } = parseFlags(SPECS, argv);
      expect(values['block-size']).toBe(1 << 20);
      expect(values.concurrency).toBe(8);
      expect([...given].sort()).toEqual(['block-size', 'concurrency']);
    }
  });

  it('parses sizes as upstream tools write them', () => {
    expect(parseSize('4096', '--x')).toBe(4096);
    expect(parseSize('64K', '--x')).toBe(65536);
    expect(parseSize('64KiB', '--x')).toBe(65536);
    expect(parseSize('1.5M', '--x')).toBe(1.5 * 2 ** 20);
    expect(parseSize('2G', '--x')).toBe(2 ** 31);
    expect(parseSize('1T', '--x')).toBe(2 ** 40);
    expect(configError(() => parseSize('12Q', '--x')).message).toBe('--x="12Q": expected a size like 4096, 64K, 1M or 2G');
    expect(configError(() => parseSize('0', '--x')).message).toMatch(/^--x="0": expected a size from 1/);
  });

  it('booleans are strict: alone, =true or =false; negatable ones take --no-', () => {
    expect(parseFlags(SPECS, ['--json']).values.json).toBe(true);
    expect(parseFlags(SPECS, ['--json=true']).values.json).toBe(true);
    expect(parseFlags(SPECS, ['--json=false']).values.json).toBe(false);
    expect(parseFlags(SPECS, ['--no-same-host']).values['same-host']).toBe(false);
    expect(parseFlags(SPECS, ['--nosame_host']).values['same-host']).toBe(false); // gflags' --noflag
    expect(parseFlags(SPECS, ['--same-host=false']).values['same-host']).toBe(false);
    expect(configError(() => parseFlags(SPECS, ['--json=yes'])).message).toBe('--json="yes": a switch: give it alone, or =true / =false');
    expect(configError(() => parseFlags(SPECS, ['--json=1'])).message).toMatch(/^--json="1"/);
    expect(configError(() => parseFlags(SPECS, ['--no-same-host=true'])).message).toMatch(/^--no-same-host="true": takes no value/);
    expect(configError(() => parseFlags(SPECS, ['--no-json'])).message).toMatch(/^--no-json: unknown option/);
  });

  it('lists take every value up to the next flag; negative numbers are values', () => {
    expect(parseFlags(SPECS, ['--hosts', 'a', 'b', 'c', '--json']).values).toMatchObject({ hosts: ['a', 'b', 'c'], json: true });
    expect(parseFlags(SPECS, ['--hosts=a,b']).values.hosts).toEqual(['a', 'b']);
    expect(configError(() => parseFlags(SPECS, ['--concurrency', '-1'])).message).toBe('--concurrency=-1: expected an integer from 1 to 64');
  });

  it('names the flag and the value in every error, in one line', () => {
    const cases: [string[], RegExp][] = [
      [['--concurrency', 'x'], /^--concurrency="x": expected an integer$/],
      [['--concurrency', '65'], /^--concurrency=65: expected an integer from 1 to 64$/],
      [['--duration', 'soon'], /^--duration="soon": expected a number$/],
      [['--mode', 'c'], /^--mode="c": expected one of a, b$/],
      [['--name'], /^--name: needs a value \(see 'mooncake-node t --help'\)$/],
      [['--name', '--json'], /^--name: needs a value/],
      [['--json', '--json'], /^--json: given more than once/],
      [['--threads', '2', '--concurrency', '3'], /^--concurrency: given more than once/],
      [['--blok-size', '4K'], /^--blok-size: unknown option for 't'; did you mean --block-size\? \(see 'mooncake-node t --help'\)$/],
      [['--zzzzzzzz'], /^--zzzzzzzz: unknown option for 't' \(see/],
      [['stray'], /^"stray": unexpected argument for 't'/],
    ];
    for (const [argv, re] of cases) {
      const e = configError(() => parseFlags(SPECS, argv, { command: 't' }));
      expect(e.message).toMatch(re);
      expect(e.message).not.toContain('\n');
    }
  });

  it('positionals when allowed, and everything after --', () => {
    expect(parseFlags(SPECS, ['x', '--json', '--', '--not-a-flag'], { maxPositionals: 2 }).positionals).toEqual(['x', '--not-a-flag']);
  });
});

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (d: Buffer) => (text += d.toString()));
  return { stream, text: () => text };
}

describe('CommandRegistry', () => {
  const seen: unknown[] = [];
  const kv = defineCommand({
    name: 'bench kv',
    summary: 'the KV bench',
    flags: { layers: { type: 'int', min: 1, default: 2, help: 'layers' } },
    async run(v) {
      seen.push(['kv', v]);
    },
  });
  const bench = defineCommand({
    name: 'bench',
    summary: 'the bench',
    flags: { 'block-size': { type: 'size', default: 4096, help: 'bytes' } },
    subcommands: [{ name: 'bench kv', summary: 'the KV bench', load: () => kv }],
    async run(v, ctx) {
      seen.push(['bench', v]);
      ctx.stdout.write('ran\n');
    },
  });
  const failing = defineCommand({
    name: 'fail',
    summary: 'fails',
    flags: {},
    async run() {
      throw new Error('something\non two lines');
    },
  });
  const registry = new CommandRegistry([
    { name: 'bench', summary: 'the bench', load: () => bench },
    { name: 'fail', summary: 'fails', load: async () => failing },
  ]);

  async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const out = capture();
    const err = capture();
    const code = await registry.run(argv, { stdout: out.stream, stderr: err.stream, handleSignals: false });
    return { code, out: out.text(), err: err.text() };
  }

  it('dispatches commands and subcommands with their own flags', async () => {
    seen.length = 0;
    expect(await run(['bench', '--block-size', '8K'])).toEqual({ code: 0, out: 'ran\n', err: '' });
    expect(await run(['bench', 'kv', '--layers', '3'])).toMatchObject({ code: 0 });
    expect(seen).toEqual([
      ['bench', { 'block-size': 8192 }],
      ['kv', { layers: 3 }],
    ]);
  });

  it('--help on every level, help <command>, --version, and the command list', async () => {
    expect((await run(['--version'])).out).toMatch(/^mooncake-node \d+\.\d+\.\d+/);
    const top = await run([]);
    expect(top.out).toMatch(/^Usage: mooncake-node <command>/);
    expect(top.out).toContain('  bench  the bench');
    const help = await run(['bench', '--help']);
    expect(help.out).toMatch(/^Usage: mooncake-node bench \[<subcommand>\] \[options\]/);
    expect(help.out).toContain('  kv  the KV bench');
    expect(help.out).toContain('--block-size SIZE');
    expect((await run(['help', 'bench', 'kv'])).out).toMatch(/^Usage: mooncake-node bench kv \[options\]/);
    expect((await run(['bench', 'kv', '-h'])).out).toContain('--layers N');
  });

  it('every failure is one coded line on stderr and exit code 1', async () => {
    const cases: [string[], RegExp][] = [
      [['nope'], /^mooncake-node: \[INVALID_CONFIG\] "nope": unknown command \(commands: bench, fail; see 'mooncake-node help'\)\n$/],
      [['bench', '--bogus'], /^mooncake-node: \[INVALID_CONFIG\] --bogus: unknown option for 'bench'/],
      [['bench', 'kv', '--block-size', '1'], /^mooncake-node: \[INVALID_CONFIG\] --block-size: unknown option for 'bench kv'/],
      [['fail'], /^mooncake-node: \[INTERNAL\] something; on two lines\n$/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(argv);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(re);
      expect(r.err.trim().split('\n')).toHaveLength(1);
      expect(r.out).toBe('');
    }
  });

  it('refuses a name registered twice', () => {
    expect(() => new CommandRegistry([{ name: 'x', summary: '', load: () => bench }, { name: 'x', summary: '', load: () => bench }])).toThrow(/registered twice/);
  });

  it('errorLine joins a multi-line message into one line', () => {
    expect(errorLine(new MooncakeError('NATIVE_LOAD_FAILED', 'could not load.\n  reason: x\n  fix: y'))).toBe('mooncake-node: [NATIVE_LOAD_FAILED] could not load. reason: x; fix: y');
  });
});
