// The published artefact: what the tarball holds, and a fresh project that installs it with nothing but
// node and npm on PATH (no compiler, make or Python), loads the prebuild and works from ESM, CommonJS and
// TypeScript. With MOONCAKE_NODE_TARBALL (CI) the tarball is the one `npm pack` made with the portable
// prebuilds, and their symbol baseline is checked too (test/package/packed.ts).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PREBUILD_FILE,
  buildToolsOn,
  cjsConsumer,
  esmConsumer,
  freshProject,
  hostTarget,
  installedPackages,
  packedTarball,
  root,
  run,
  tarballFiles,
  toolchainFreeBin,
  type Packed,
} from './packed';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { inspect, violations } = require('../../scripts/check-prebuilds.js') as {
  inspect(file: string): { highest: Record<string, { version: string }> };
  violations(info: unknown): string[];
};

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-pkg-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let packed: Packed;
let files: string[];
beforeAll(() => {
  packed = packedTarball(tmp, 'package');
  files = tarballFiles(packed.file);
}, 300_000);

const expected = {
  ok: true,
  code: 'SEGMENT_NOT_FOUND',
  isError: true,
  optional: { etcd: 'MISSING_DEPENDENCY etcd3', redis: 'MISSING_DEPENDENCY redis' },
};

describe('the npm package', () => {
  it('ships the built code, its sources and license, the native sources that build it, and prebuilds', () => {
    for (const f of ['dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/index.d.mts', 'dist/compat.js', 'dist/compat.mjs', 'dist/compat.d.ts', 'dist/compat.d.mts', 'dist/cli.js', 'binding.gyp', 'CMakeLists.txt', 'LICENSE', 'README.md', 'scripts/build-sources.js', 'native/engine/engine.h', 'native/addon/engine_wrap.cpp', 'native/addon/exports.map', `prebuilds/${hostTarget}/${PREBUILD_FILE}`]) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => f.startsWith('test/') || f.startsWith('build/'))).toEqual([]);
    if (packed.portable) expect(files.filter((f) => f.startsWith('prebuilds/')).sort()).toEqual([`prebuilds/linux-arm64/${PREBUILD_FILE}`, `prebuilds/linux-x64/${PREBUILD_FILE}`]);

    const unpack = fs.mkdtempSync(path.join(tmp, 'files-'));
    run('tar', ['xzf', packed.file, '-C', unpack], tmp);
    const pkg = path.join(unpack, 'package');
    // Every source map points at files that ship.
    const maps = files.filter((f) => f.endsWith('.js.map'));
    expect(maps.length).toBeGreaterThan(10);
    for (const m of maps) {
      const map = JSON.parse(fs.readFileSync(path.join(pkg, m), 'utf8')) as { sources: string[] };
      for (const s of map.sources) expect(files, `${m} -> ${s}`).toContain(path.posix.normalize(path.posix.join(path.posix.dirname(m), s)));
    }
    // @internal members stay out of the declarations.
    expect(fs.readFileSync(path.join(pkg, 'dist/engine/segment.d.ts'), 'utf8')).not.toMatch(/get handle\(|refresh\(|readonly owner/);
    expect(fs.readFileSync(path.join(pkg, 'LICENSE'), 'utf8')).toContain('Apache License');

    const manifest = JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(manifest.license).toBe('Apache-2.0');
    expect(manifest.repository).toMatchObject({ type: 'git', url: expect.stringMatching(/^git\+https:\/\/github\.com\/.+\.git$/) });
    expect(manifest.homepage).toMatch(/^https:\/\//);
    expect(manifest.bugs).toMatchObject({ url: expect.stringMatching(/^https:\/\//) });
    expect(Object.keys(manifest.dependencies as object).sort()).toEqual(['node-addon-api', 'node-gyp-build']);
    expect(manifest.peerDependenciesMeta).toEqual({ etcd3: { optional: true }, msgpackr: { optional: true }, 'prom-client': { optional: true }, redis: { optional: true }, zeromq: { optional: true } });
    // Images on the registry page: absolute addresses (relative ones do not resolve there).
    const images = [...fs.readFileSync(path.join(pkg, 'README.md'), 'utf8').matchAll(/!\[[^\]]*\]\(([^)\s]+)/g)].map((m) => m[1]);
    for (const src of images) expect(src).toMatch(/^https:\/\//);

    // The portable prebuilds: GLIBC at most 2.28, no libstdc++, glibc-only NEEDED, Node-API exports only.
    if (packed.portable) {
      for (const target of ['linux-x64', 'linux-arm64']) {
        const file = path.join(pkg, 'prebuilds', target, PREBUILD_FILE);
        const info = inspect(file);
        expect(violations({ ...info, file }), target).toEqual([]);
        expect(info.highest.GLIBC).toBeDefined();
      }
    }
  });

  it('installs with only node, npm and sh on PATH, loads the prebuild, and works from ESM, CommonJS and TypeScript', () => {
    const bin = toolchainFreeBin(tmp);
    expect(buildToolsOn(bin)).toEqual([]);
    const env = { PATH: bin, npm_config_build_from_source: '' };
    const app = freshProject(tmp, 'app');
    run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', packed.file], app, env);
    const installed = path.join(app, 'node_modules', 'mooncake-node');
    expect(fs.existsSync(path.join(installed, 'build'))).toBe(false);

    // The footprint: the package and its two small runtime dependencies; the metadata backends' clients
    // are optional peers, installed only by those who use them.
    const footprint = installedPackages(app);
    console.log(`[package] install footprint: ${footprint.packages.length} packages, ${(footprint.bytes / 1e6).toFixed(1)} MB in node_modules (${footprint.packages.join(', ')})`);
    expect(footprint.packages.map((p) => p.replace(/@[^@]+$/, ''))).toEqual(['mooncake-node', 'node-addon-api', 'node-gyp-build']);

    // Consumers, with PREBUILDS_ONLY so a stray local build could not be what loads.
    fs.writeFileSync(path.join(app, 'esm.mjs'), esmConsumer);
    fs.writeFileSync(path.join(app, 'cjs.cjs'), cjsConsumer);
    for (const file of ['esm.mjs', 'cjs.cjs']) {
      const out = JSON.parse(run(process.execPath, [file], app, { ...env, PREBUILDS_ONLY: '1' }).trim().split('\n').pop()!) as Record<string, unknown>;
      expect(out).toEqual({ ...expected, arch: process.arch, binding: `prebuilds/${hostTarget}/${PREBUILD_FILE}` });
    }
    // ESM and CommonJS see the same classes (no dual-package hazard).
    const same = run(process.execPath, ['--input-type=module', '-e', "import { MooncakeError } from 'mooncake-node'; import { createRequire } from 'node:module'; const r = createRequire(import.meta.url)('mooncake-node'); console.log(r.MooncakeError === MooncakeError);"], app, env);
    expect(same.trim()).toBe('true');
    // The opt-in compat module: the same class from ESM and CommonJS, over the package's engine.
    const compat = run(process.execPath, ['--input-type=module', '-e', "import { UpstreamCompat } from 'mooncake-node/compat'; import { createRequire } from 'node:module'; const r = createRequire(import.meta.url)('mooncake-node/compat'); console.log(typeof UpstreamCompat, r.UpstreamCompat === UpstreamCompat);"], app, env);
    expect(compat.trim()).toBe('function true');
    // Where no prebuild matches (LIBC=musl makes node-gyp-build look for a musl binary, as on Alpine):
    // NATIVE_LOAD_FAILED, saying what the compile fallback needs.
    const noMatch = JSON.parse(
      run(process.execPath, ['-e', "require('mooncake-node').TransferEngine.create({ metadataServer: 'P2PHANDSHAKE' }).then(() => console.log('{}'), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))"], app, { ...env, PREBUILDS_ONLY: '1', LIBC: 'musl' }),
    ) as { code: string; message: string };
    expect(noMatch.code).toBe('NATIVE_LOAD_FAILED');
    expect(noMatch.message).toContain('glibc');
    expect(noMatch.message).toMatch(/Python 3, make and a C\+\+17 compiler/);
    // The CLI bin is installed.
    expect(run(path.join(app, 'node_modules/.bin/mooncake-node'), ['help'], app, env)).toContain('bench');

    // Types resolve for both module systems; internal members are not part of them and fields are read-only.
    fs.writeFileSync(
      path.join(app, 'types.mts'),
      [
        "import { TransferEngine, type TransferRequest, type ErrorCode, type Segment } from 'mooncake-node';",
        "import { UpstreamCompat, type TaskStatusInfo } from 'mooncake-node/compat';",
        "export function h(e: TransferEngine): TaskStatusInfo['status'] { return new UpstreamCompat(e).getBatchTransferStatus(new UpstreamCompat(e).allocateBatch(1)).status; }",
        "const c: ErrorCode = 'TIMEOUT';",
        "export async function f(): Promise<bigint> { const e = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE' }); const r: TransferRequest = { local: 1n, remote: 2n, length: 3 }; void r; void c; return (await e.allocateManagedBuffer(8)).address; }",
        'export function g(s: Segment): number {',
        '  // @ts-expect-error the engine handle is internal',
        '  void s.handle;',
        '  // @ts-expect-error a segment is read-only to callers',
        '  s.rpcPort = 1;',
        '  return s.buffers.length;',
        '}',
        '',
      ].join('\n'),
    );
    fs.writeFileSync(path.join(app, 'types.cts'), "import { MooncakeError, StatusCodes } from 'mooncake-node';\nimport { UpstreamCompat } from 'mooncake-node/compat';\nexport const n: number = StatusCodes.TIMEOUT + new MooncakeError('CLOSED', 'x').status;\nexport type C = UpstreamCompat;\n");
    run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--lib', 'es2022,esnext.disposable', '--types', 'node', '--typeRoots', path.join(root, 'node_modules/@types'), 'types.mts', 'types.cts'], app);
  }, 600_000);
});
