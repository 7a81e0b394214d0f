// Every code block of README.md, docs/*.md and examples/**/*.md runs as written (scripts/doc-examples.mjs),
// unless the line before it says `<!-- norun: <reason> -->`. One test per file; the runner itself is tested
// first, on blocks that must fail.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers/upstream';

interface Block {
  line: number;
  lang: string;
  code: string;
  norun?: string;
  serve?: string;
  timeoutS: number;
  error?: string;
}
interface BlockResult {
  file: string;
  line: number;
  lang: string;
  status: 'ok' | 'fail' | 'norun' | 'text';
  reason?: string;
  output?: string;
  ms?: number;
}
interface Runner {
  docFiles(): string[];
  extractBlocks(markdown: string): Block[];
  runFile(file: string): Promise<BlockResult[]>;
}

const script = path.join(repoRoot, 'scripts', 'doc-examples.mjs');
let runner: Runner;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-doc-test-'));
beforeAll(async () => {
  runner = (await import(pathToFileURL(script).href)) as Runner;
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('the documentation runner', () => {
  it('reads blocks, their language and the comment lines above them', () => {
    const md = [
      '# t',
      '<!-- norun: needs an NPU -->',
      '```ts',
      'x;',
      '```',
      '',
      '<!-- serve: ready -->',
      '',
      '```sh',
      'server',
      '```',
      '<!-- timeout: 5 -->',
      '  ```json',
      '  {"a": 1}',
      '  ```',
      '```',
      'no language',
      '```',
      '<!-- norun: -->',
      '```sh',
      '```',
      '```cobol',
      '```',
      '```text',
      'unclosed',
    ].join('\n');
    const blocks = runner.extractBlocks(md);
    expect(blocks.map((b) => [b.line, b.lang, b.norun, b.serve, b.timeoutS, b.error])).toEqual([
      [3, 'ts', 'needs an NPU', undefined, 120, undefined],
      [9, 'sh', undefined, 'ready', 120, undefined],
      [13, 'json', undefined, undefined, 5, undefined],
      [16, '', undefined, undefined, 120, 'a block without a language: tag it (sh, ts, js, json, text, ...)'],
      [20, 'sh', '', undefined, 120, 'norun needs a reason: <!-- norun: why this cannot run on a CPU box -->'],
      [22, 'cobol', undefined, undefined, 120, "no runner for 'cobol' blocks: mark it <!-- norun: reason --> or use a runnable language"],
      [24, 'text', undefined, undefined, 120, 'the block is never closed'],
    ]);
    expect(blocks[2].code).toBe('{"a": 1}\n');
  });

  it('fails blocks that fail: a type error, a throw, a non-zero exit, bad JSON, a server that dies', async () => {
    const file = path.join(tmp, 'failing.md');
    fs.writeFileSync(
      file,
      [
        '```ts',
        "import { MetadataServer } from 'mooncake-node';",
        'const n: number = new MetadataServer().path;',
        '```',
        '```js',
        "throw new Error('boom');",
        '```',
        '```sh',
        'true && exit 3',
        '```',
        '```json',
        '{nope}',
        '```',
        '<!-- serve -->',
        '```sh',
        'echo listening; exit 0',
        '```',
        '```js',
        "import { MetadataServer } from 'mooncake-node';",
        "console.log(typeof MetadataServer === 'function' ? 'fine' : 'no');",
        '```',
        '```mjs',
        '```',
      ].join('\n'),
    );
    const results = await runner.runFile(file);
    expect(results.map((r) => [r.line, r.status])).toEqual([
      [1, 'fail'],
      [5, 'fail'],
      [8, 'fail'],
      [11, 'fail'],
      [15, 'fail'],
      [18, 'ok'],
      [22, 'ok'],
    ]);
    expect(results[0].output).toMatch(/type errors:\nblock line 2: Type 'string' is not assignable to type 'number'/);
    expect(results[1].output).toMatch(/Error: boom/);
    expect(results[3].output).toMatch(/not valid JSON/);
    expect(results[4].output).toMatch(/stopped before the last block of the file ran/);
  }, 120_000);

  it('runs `npx mooncake-node` as this checkout, and each file in its own network namespace', async () => {
    const file = path.join(tmp, 'cli.md');
    fs.writeFileSync(file, ['<!-- serve -->', '```sh', 'npx mooncake-node metadata-server --port 8080', '```', '```sh', "curl -sf -X PUT --data x 'http://127.0.0.1:8080/metadata?key=k'", '```'].join('\n'));
    const r = spawnSync(process.execPath, [script, '--json', file], { encoding: 'utf8', timeout: 120_000 });
    const results = JSON.parse(r.stdout) as BlockResult[];
    expect(results.map((x) => x.status), JSON.stringify(results)).toEqual(['ok', 'ok']);
  }, 150_000);
});

describe('README.md, docs/ and examples/ run as written', () => {
  const files = fs.existsSync(script) ? (spawnSync(process.execPath, ['--input-type=module', '-e', `import { docFiles } from ${JSON.stringify(pathToFileURL(script).href)}; console.log(JSON.stringify(docFiles()))`], { encoding: 'utf8' }).stdout.trim() || '[]') : '[]';
  for (const file of JSON.parse(files) as string[]) {
    it(file, () => {
      const r = spawnSync(process.execPath, [script, '--json', file], { cwd: repoRoot, encoding: 'utf8', timeout: 20 * 60_000, maxBuffer: 64 * 1024 * 1024 });
      let results: BlockResult[];
      try {
        results = JSON.parse(r.stdout) as BlockResult[];
      } catch {
        throw new Error(`the runner failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
      }
      const count = (s: BlockResult['status']): number => results.filter((x) => x.status === s).length;
      console.log(`[doc examples] ${file}: ${count('ok')} ran, ${count('norun')} norun, ${count('text')} not code, ${count('fail')} failed`);
      const failed = results.filter((x) => x.status === 'fail').map((x) => `${x.file}:${x.line} (${x.lang})\n${x.output ?? ''}`);
      expect(failed, failed.join('\n\n')).toEqual([]);
    }, 20 * 60_000);
  }
});
