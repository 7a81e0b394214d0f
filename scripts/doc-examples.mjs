#!/usr/bin/env node
// Runs the code blocks of README.md, docs/*.md and examples/**/*.md as written, so every example keeps
// working. Needs the package built (npm run build): examples import 'mooncake-node' and run `npx mooncake-node`.
//
//   node scripts/doc-examples.mjs [--json] [FILE.md ...]      (default: every documentation file)
//
// What a block's language means:
//   ts, typescript          type-checked against the built package, compiled, run with node (ESM)
//   js, javascript, mjs     run with node (ESM; a js block that only uses require() runs as CommonJS)
//   cjs                     run with node as CommonJS
//   sh, bash, shell         run with bash -e from the repository root (docs/ is a scratch copy);
//                           `npx mooncake-node` and `mooncake-node` run this checkout's dist/cli.js
//   python, py              run with python3
//   json                    parsed
//   text, txt, plaintext, output, console-output, yaml, toml, ini, svg, mermaid, diff   not code: skipped
// A block without a language is refused: say what it is.
//
// Comment lines immediately before a block (blank lines between are allowed) change how it runs:
//   <!-- norun: <reason> -->  not run; for what a CPU box cannot run (real NPUs, a second host...)
//   <!-- serve -->            a server: started in the background, it must print a line containing
//                             "listening" (or <!-- serve: <regex> -->) and still run when the file's last
//                             block is done; it then gets SIGTERM and must exit within 15 s
//   <!-- timeout: <s> -->     this block's time limit (default 120 s)
//
// Each file runs in its own network namespace (unshare -rn) when the machine allows it, so the fixed ports
// the docs use (8000, 8080, ...) never collide with anything else; its blocks share it, in order.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const RUNNABLE = new Map([
  ['ts', 'ts'], ['typescript', 'ts'], ['js', 'js'], ['javascript', 'js'], ['mjs', 'mjs'], ['cjs', 'cjs'],
  ['sh', 'sh'], ['bash', 'sh'], ['shell', 'sh'], ['python', 'py'], ['py', 'py'], ['json', 'json'],
]);
const NOT_CODE = new Set(['text', 'txt', 'plaintext', 'output', 'console-output', 'yaml', 'yml', 'toml', 'ini', 'svg', 'mermaid', 'diff']);
const DEFAULT_TIMEOUT_S = 120;

/** The documentation files whose blocks run. */
export function docFiles(root = repo) {
  const out = [];
  const add = (p) => fs.existsSync(p) && out.push(path.relative(root, p));
  add(path.join(root, 'README.md'));
  const walk = (dir) => {
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.md')) out.push(path.relative(root, p));
    }
  };
  walk(path.join(root, 'docs'));
  walk(path.join(root, 'examples'));
  return out;
}

/**
 * The fenced blocks of a Markdown text: { line, lang, code, norun, serve, timeoutS, error }. `line` is the
 * 1-based line of the opening fence.
 */
export function extractBlocks(markdown) {
  const lines = markdown.split('\n');
  const blocks = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)(.*)$/.exec(lines[i]);
    if (open === null) continue;
    const [, indent, fence, info] = open;
    const lang = info.toLowerCase();
    const body = [];
    let j = i + 1;
    const close = new RegExp(`^\\s*${fence[0] === '`' ? '`' : '~'}{${fence.length},}\\s*$`);
    for (; j < lines.length && !close.test(lines[j]); j++) body.push(lines[j].startsWith(indent) ? lines[j].slice(indent.length) : lines[j].trimStart());
    const block = { line: i + 1, lang, code: body.join('\n') + '\n', norun: undefined, serve: undefined, timeoutS: DEFAULT_TIMEOUT_S, error: undefined };
    // Directives: the comment lines just above the fence.
    for (let k = i - 1; k >= 0; k--) {
      const t = lines[k].trim();
      if (t === '') continue;
      const d = /^<!--\s*(norun|serve|timeout)\s*(?::\s*(.*?))?\s*-->$/.exec(t);
      if (d === null) break;
      if (d[1] === 'norun') {
        if (!d[2]) block.error = 'norun needs a reason: <!-- norun: why this cannot run on a CPU box -->';
        block.norun = d[2];
      } else if (d[1] === 'serve') block.serve = d[2] || 'listening';
      else {
        const s = Number(d[2]);
        if (!(s > 0 && s <= 3600)) block.error = `timeout must be seconds in (0, 3600], got '${d[2]}'`;
        else block.timeoutS = s;
      }
    }
    if (j >= lines.length) block.error = 'the block is never closed';
    else if (lang === '') block.error = 'a block without a language: tag it (sh, ts, js, json, text, ...)';
    else if (!RUNNABLE.has(lang) && !NOT_CODE.has(lang) && block.norun === undefined) block.error = `no runner for '${lang}' blocks: mark it <!-- norun: reason --> or use a runnable language`;
    if (block.serve !== undefined && RUNNABLE.get(lang) !== 'sh') block.error = 'serve is for sh blocks';
    blocks.push(block);
    i = j;
  }
  return blocks;
}

function tail(s, n = 4000) {
  return s.length > n ? `...${s.slice(-n)}` : s;
}

/** Runs a command with a time limit; resolves { code, signal, out, timedOut }. */
function run(cmd, args, { cwd, timeoutS, env, input }) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], detached: true });
    let out = '';
    const add = (d) => {
      out = tail(out + d.toString(), 64 * 1024);
    };
    child.stdout.on('data', add);
    child.stderr.on('data', add);
    if (input !== undefined) child.stdin.end(input);
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, timeoutS * 1000);
    child.once('error', (e) => {
      clearTimeout(t);
      resolve({ code: null, signal: null, out: String(e), timedOut });
    });
    child.once('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, out, timedOut });
    });
  });
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // gone
    }
  }
}

/**
 * A scratch tree: node_modules/mooncake-node is this repository; `work/` mirrors the repository with a private
 * docs/; `bin/` puts `mooncake-node` on PATH and makes `npx mooncake-node` run this checkout's dist/cli.js
 * (npm exec would otherwise resolve, or even install, the package itself).
 */
function scratch() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-doc-'));
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  const cli = path.join(repo, 'dist', 'cli.js');
  const realNpx = spawnSync('bash', ['-c', 'command -v npx'], { encoding: 'utf8' }).stdout.trim() || 'npx';
  fs.writeFileSync(path.join(bin, 'mooncake-node'), `#!/bin/sh\nexec "${process.execPath}" "${cli}" "$@"\n`, { mode: 0o755 });
  fs.writeFileSync(
    path.join(bin, 'npx'),
    `#!/bin/sh\nif [ "$1" = mooncake-node ]; then shift; exec "${process.execPath}" "${cli}" "$@"; fi\nexec "${realNpx}" "$@"\n`,
    { mode: 0o755 },
  );
  fs.mkdirSync(path.join(dir, 'node_modules', '@types'), { recursive: true });
  fs.symlinkSync(repo, path.join(dir, 'node_modules', 'mooncake-node'));
  // The optional peer dependencies a reader installs beside the package when an example uses one.
  const peers = Object.keys(JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8')).peerDependencies ?? {});
  for (const p of peers) {
    const at = path.join(repo, 'node_modules', p);
    if (fs.existsSync(at)) fs.symlinkSync(at, path.join(dir, 'node_modules', p));
  }
  const types = path.join(repo, 'node_modules', '@types', 'node');
  if (fs.existsSync(types)) fs.symlinkSync(types, path.join(dir, 'node_modules', '@types', 'node'));
  const work = path.join(dir, 'work');
  fs.mkdirSync(work);
  for (const e of fs.readdirSync(repo)) {
    if (e === 'docs') fs.cpSync(path.join(repo, e), path.join(work, e), { recursive: true });
    else fs.symlinkSync(path.join(repo, e), path.join(work, e));
  }
  return { dir, work, bin };
}

/** Type-checks the TypeScript blocks of one file together, against the built package's .d.ts. */
function typecheck(blocks, dir) {
  const ts = createRequire(path.join(repo, 'package.json'))('typescript');
  const files = blocks.map((b, k) => {
    const f = path.join(dir, `block-${k}-line-${b.line}.mts`);
    fs.writeFileSync(f, b.code);
    return f;
  });
  const program = ts.createProgram(files, {
    noEmit: true, strict: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16,
    lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'], types: ['node'], typeRoots: [path.join(dir, 'node_modules', '@types')], skipLibCheck: true,
  });
  const errors = new Map();
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const k = d.file ? files.indexOf(d.file.fileName) : -1;
    if (k < 0) continue;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
    const msg = `block line ${line + 1}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
    errors.set(k, [...(errors.get(k) ?? []), msg]);
  }
  return (k) => errors.get(k)?.join('\n');
}

function transpile(code) {
  const ts = createRequire(path.join(repo, 'package.json'))('typescript');
  return ts.transpileModule(code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
}

/** Runs every block of one file (in this process's network namespace); returns one result per block. */
export async function runFile(file, log = () => {}) {
  const text = fs.readFileSync(path.resolve(repo, file), 'utf8');
  const blocks = extractBlocks(text);
  const { dir, work, bin } = scratch();
  const env = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ''}`, FORCE_COLOR: '0', NO_COLOR: '1' };
  const results = [];
  const servers = [];
  const tsBlocks = blocks.filter((b) => RUNNABLE.get(b.lang) === 'ts' && b.norun === undefined && b.error === undefined);
  const tsErrors = tsBlocks.length > 0 ? typecheck(tsBlocks, dir) : () => undefined;
  try {
    for (const [k, b] of blocks.entries()) {
      const where = `${file}:${b.line}`;
      const base = { file, line: b.line, lang: b.lang };
      if (b.error !== undefined) {
        results.push({ ...base, status: 'fail', output: b.error });
        continue;
      }
      if (b.norun !== undefined) {
        results.push({ ...base, status: 'norun', reason: b.norun });
        continue;
      }
      const kind = RUNNABLE.get(b.lang);
      if (kind === undefined) {
        results.push({ ...base, status: 'text' });
        continue;
      }
      log(`${where} (${b.lang}) ...`);
      const t0 = Date.now();
      let r;
      if (kind === 'json') {
        try {
          JSON.parse(b.code);
          r = { code: 0, out: '' };
        } catch (e) {
          r = { code: 1, out: `not valid JSON: ${e.message}` };
        }
      } else if (kind === 'sh' && b.serve !== undefined) {
        const script = /\n./.test(b.code.replace(/\\\n/g, ' ').trim()) ? b.code : `exec ${b.code.replace(/\\\n/g, ' ').trim()}\n`;
        const child = spawn('bash', ['-e', '-c', script], { cwd: work, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        let out = '';
        const ready = new RegExp(b.serve, 'i');
        const up = await new Promise((resolve) => {
          const t = setTimeout(() => resolve(`did not print /${b.serve}/ within ${b.timeoutS} s`), b.timeoutS * 1000);
          const add = (d) => {
            out = tail(out + d.toString(), 64 * 1024);
            if (ready.test(out)) {
              clearTimeout(t);
              resolve(undefined);
            }
          };
          child.stdout.on('data', add);
          child.stderr.on('data', add);
          child.once('close', (code, signal) => {
            clearTimeout(t);
            resolve(`exited (${code ?? signal}) before it was ready`);
          });
        });
        const exited = new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('close', () => resolve())));
        if (up === undefined) servers.push({ child, base, t0, exited, out: () => out });
        else killGroup(child, 'SIGKILL');
        r = up === undefined ? { code: 0, out: '' } : { code: 1, out: `${up}\n${out}` };
      } else {
        let cmd;
        let args;
        if (kind === 'sh') {
          cmd = 'bash';
          args = ['-e', '-c', b.code];
        } else if (kind === 'py') {
          cmd = 'python3';
          args = ['-c', b.code];
        } else {
          const typeErrors = kind === 'ts' ? tsErrors(tsBlocks.indexOf(b)) : undefined;
          if (typeErrors !== undefined) {
            results.push({ ...base, status: 'fail', ms: Date.now() - t0, output: `type errors:\n${typeErrors}` });
            continue;
          }
          const cjs = kind === 'cjs' || (kind === 'js' && /\brequire\(/.test(b.code) && !/^\s*import\s/m.test(b.code));
          const f = path.join(dir, `block-${k}.${cjs ? 'cjs' : 'mjs'}`);
          fs.writeFileSync(f, kind === 'ts' ? transpile(b.code) : b.code);
          cmd = process.execPath;
          args = [f];
        }
        r = await run(cmd, args, { cwd: kind === 'sh' || kind === 'py' ? work : dir, timeoutS: b.timeoutS, env });
        if (r.timedOut) r = { code: 1, out: `timed out after ${b.timeoutS} s\n${r.out}` };
      }
      results.push({ ...base, status: r.code === 0 ? 'ok' : 'fail', ms: Date.now() - t0, output: r.code === 0 ? undefined : tail(r.out) });
    }
  } finally {
    // Servers must have lasted until here, and stop on SIGTERM.
    for (const s of servers) {
      const alive = s.child.exitCode === null && s.child.signalCode === null;
      killGroup(s.child, 'SIGTERM');
      let timer;
      const stopped = await Promise.race([s.exited.then(() => true), new Promise((r) => (timer = setTimeout(() => r(false), 15_000)))]);
      clearTimeout(timer);
      if (!stopped) killGroup(s.child, 'SIGKILL');
      const i = results.findIndex((x) => x.file === s.base.file && x.line === s.base.line);
      if (!alive || !stopped) results[i] = { ...results[i], status: 'fail', output: tail(`${alive ? 'did not stop within 15 s of SIGTERM' : 'stopped before the last block of the file ran'}\n${s.out()}`) };
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

let namespaceWorks;
/** Whether `unshare -rn` gives this user a private network namespace with a working loopback. */
export function canUnshare() {
  namespaceWorks ??= spawnSync('unshare', ['-rn', 'ip', 'link', 'set', 'lo', 'up'], { stdio: 'ignore', timeout: 10_000 }).status === 0;
  return namespaceWorks;
}

async function main(argv) {
  const json = argv.includes('--json');
  const inside = argv.includes('--in-namespace');
  const files = argv.filter((a) => !a.startsWith('--'));
  const list = files.length > 0 ? files : docFiles();
  const say = (s) => process.stderr.write(`${s}\n`);
  let failed = 0;
  const all = [];
  for (const file of list) {
    let results;
    if (!inside && canUnshare()) {
      // Re-run this script for the file inside a private network namespace, and collect its JSON.
      const script = fileURLToPath(import.meta.url);
      const r = spawnSync('unshare', ['-rn', 'bash', '-c', 'ip link set lo up && exec "$0" "$@"', process.execPath, script, '--in-namespace', '--json', file], {
        encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024,
      });
      try {
        results = JSON.parse(r.stdout);
      } catch {
        results = [{ file, line: 0, lang: '', status: 'fail', output: `the runner failed (${r.status ?? r.signal}):\n${tail(r.stdout ?? '')}` }];
      }
    } else {
      if (!inside) say(`doc-examples: no private network namespace here (unshare -rn): ${file} runs on this machine's ports`);
      results = await runFile(file, json ? () => {} : say);
    }
    all.push(...results);
    for (const r of results) if (r.status === 'fail') failed++;
  }
  if (json) process.stdout.write(JSON.stringify(all) + '\n');
  else {
    for (const r of all) {
      const what = r.status === 'norun' ? `norun (${r.reason})` : r.status;
      say(`${r.status === 'fail' ? 'FAIL' : '    '} ${r.file}:${r.line} ${r.lang || '(none)'} ${what}${r.ms !== undefined ? ` ${(r.ms / 1000).toFixed(1)} s` : ''}`);
      if (r.status === 'fail') say(r.output.replace(/^/gm, '       '));
    }
    const count = (s) => all.filter((r) => r.status === s).length;
    say(`doc-examples: ${count('ok')} blocks ran, ${failed} failed, ${count('norun')} marked norun, ${count('text')} not code, in ${list.length} files`);
  }
  process.exitCode = failed > 0 ? 1 : 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main(process.argv.slice(2));
