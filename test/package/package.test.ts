// The published artefact works: `npm pack` gives an installable package with types, prebuildify makes
// prebuilds that node-gyp-build loads with no compiler step, and both ESM and CommonJS consumers work.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..', '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-pkg-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const consumerBody = (imp: string) => `${imp}
const meta = new MetadataServer({ logger: null });
const { url } = await meta.listen();
const a = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
const b = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
const ra = await a.allocateManagedBuffer(1 << 20);
const rb = await b.registerMemory(Buffer.alloc(1 << 20));
ra.buffer.fill(42);
const seg = await a.openSegment(b.localServerName);
await a.write(seg, [{ local: ra, remote: seg.address(0), length: 1 << 20 }]);
let err;
try { await a.openSegment('missing'); } catch (e) { err = e; }
console.log(JSON.stringify({ ok: rb.buffer.every((x) => x === 42), code: err.code, isError: err instanceof MooncakeError }));
await a.close(); await b.close(); await meta.close();
`;

describe('the npm package', () => {
  it('packs, installs from prebuilds alone, and works from ESM, CommonJS and TypeScript', () => {
    // 1. The package as published (dist/ was built by `npm test`; scripts skipped so dist/ is untouched).
    const tgz = run('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp, '--json'], root);
    const packed = JSON.parse(tgz) as { filename: string; files: { path: string }[] }[];
    const files = packed[0].files.map((f) => f.path);
    for (const f of ['dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/index.d.mts', 'dist/cli.js', 'binding.gyp', 'CMakeLists.txt', 'scripts/build-sources.js', 'native/engine/engine.h', 'native/addon/engine_wrap.cpp']) {
      expect(files).toContain(f);
    }
    expect(files.some((f) => f.startsWith('test/'))).toBe(false);

    // 2. prebuildify in an unpacked copy (never in the checkout, whose build/ other suites are using).
    const unpack = path.join(tmp, 'unpack');
    fs.mkdirSync(unpack);
    execFileSync('tar', ['xzf', path.join(tmp, packed[0].filename), '-C', unpack]);
    const pkgDir = path.join(unpack, 'package');
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(pkgDir, 'node_modules'));
    run(process.execPath, [path.join(root, 'node_modules/prebuildify/bin.js'), '--napi', '--strip'], pkgDir);
    const prebuilt = fs.readdirSync(path.join(pkgDir, 'prebuilds', `${process.platform}-${process.arch}`));
    expect(prebuilt.some((f) => f.endsWith('.node'))).toBe(true);
    fs.rmSync(path.join(pkgDir, 'build'), { recursive: true, force: true });
    fs.unlinkSync(path.join(pkgDir, 'node_modules'));
    const withPrebuilds = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--pack-destination', unpack, '--json'], pkgDir)) as { filename: string }[];

    // 3. A consumer installs the tarball: node-gyp-build must find the prebuild (no build/ appears).
    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, version: '1.0.0' }));
    run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', path.join(unpack, withPrebuilds[0].filename)], app, { npm_config_build_from_source: '' });
    const installed = path.join(app, 'node_modules', 'mooncake-node');
    expect(fs.existsSync(path.join(installed, 'build'))).toBe(false);

    // 4. Consumers, with PREBUILDS_ONLY so a stray local build could not be what loads.
    fs.writeFileSync(path.join(app, 'esm.mjs'), consumerBody("import { TransferEngine, MetadataServer, MooncakeError } from 'mooncake-node';"));
    fs.writeFileSync(path.join(app, 'cjs.cjs'), `(async () => {\n${consumerBody("const { TransferEngine, MetadataServer, MooncakeError } = require('mooncake-node');")}\n})();`);
    for (const file of ['esm.mjs', 'cjs.cjs']) {
      const out = run(process.execPath, [file], app, { PREBUILDS_ONLY: '1' });
      expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ ok: true, code: 'SEGMENT_NOT_FOUND', isError: true });
    }
    // ESM and CommonJS see the same classes (no dual-package hazard).
    const same = run(process.execPath, ['--input-type=module', '-e', "import { MooncakeError } from 'mooncake-node'; import { createRequire } from 'node:module'; const r = createRequire(import.meta.url)('mooncake-node'); console.log(r.MooncakeError === MooncakeError);"], app);
    expect(same.trim()).toBe('true');
    // The CLI bin is installed.
    expect(run(path.join(app, 'node_modules/.bin/mooncake-node'), ['help'], app)).toContain('bench');

    // 5. Types resolve for both module systems.
    fs.writeFileSync(path.join(app, 'types.mts'), "import { TransferEngine, type TransferRequest, type ErrorCode } from 'mooncake-node';\nconst c: ErrorCode = 'TIMEOUT';\nexport async function f(): Promise<bigint> { const e = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE' }); const r: TransferRequest = { local: 1n, remote: 2n, length: 3 }; void r; void c; return (await e.allocateManagedBuffer(8)).address; }\n");
    fs.writeFileSync(path.join(app, 'types.cts'), "import { MooncakeError, StatusCodes } from 'mooncake-node';\nexport const n: number = StatusCodes.TIMEOUT + new MooncakeError('CLOSED', 'x').status;\n");
    run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--lib', 'es2022,esnext.disposable', '--types', 'node', '--typeRoots', path.join(root, 'node_modules/@types'), 'types.mts', 'types.cts'], app);
  }, 600_000);
});
