/**
 * The npm package as a user gets it, for the package suites.
 *
 * - `packedTarball()`: the tarball named by MOONCAKE_NODE_TARBALL when set (CI sets it to what `npm pack`
 *   made: prepack builds the portable linux-x64 and linux-arm64 prebuilds with scripts/prebuild.js);
 *   otherwise a tarball of this checkout whose only prebuild is the local build, with a loud note that
 *   this tests the package's shape and install, not the portability of its binaries.
 * - `toolchainFreeBin()`: a directory holding only `node`, `npm` and `sh`, to be the whole PATH of an install.
 * - `freshProject()` and `installedPackages()`: a consumer project and what its install brought in.
 * - `consumerScript()`: two engines in one process move 1 MiB and report what they saw.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const root = path.resolve(__dirname, '..', '..');
export const PREBUILD_FILE = 'mooncake-node.glibc.node';
export const hostTarget = `${process.platform}-${process.arch}`;

export function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}, timeout = 300_000): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, timeout });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export interface Packed {
  file: string;
  /** True for the tarball `npm pack` made with the portable prebuilds (MOONCAKE_NODE_TARBALL). */
  portable: boolean;
}

/** The tarball under test (see the file comment). `tmp` receives any tarball made here. */
export function packedTarball(tmp: string, suite: string): Packed {
  const given = process.env.MOONCAKE_NODE_TARBALL;
  if (given) {
    if (!fs.existsSync(given)) throw new Error(`MOONCAKE_NODE_TARBALL=${given} does not exist`);
    return { file: path.resolve(given), portable: true };
  }
  console.warn(
    `\n[${suite}] NOTE: MOONCAKE_NODE_TARBALL is not set, so this packs the checkout with its local build as the only ` +
      `prebuild: it checks the package and its install, not the portable prebuilds. For those: ` +
      '`npm pack` (prepack runs scripts/prebuild.js), then MOONCAKE_NODE_TARBALL=<the .tgz> npx vitest run test/package\n',
  );
  const packed = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp, '--json'], root)) as { filename: string }[];
  const unpack = fs.mkdtempSync(path.join(tmp, 'unpack-'));
  execFileSync('tar', ['xzf', path.join(tmp, packed[0].filename), '-C', unpack]);
  const pkgDir = path.join(unpack, 'package');
  fs.rmSync(path.join(pkgDir, 'prebuilds'), { recursive: true, force: true });
  fs.mkdirSync(path.join(pkgDir, 'prebuilds', hostTarget), { recursive: true });
  fs.copyFileSync(path.join(root, 'build', 'Release', 'mooncake_node.node'), path.join(pkgDir, 'prebuilds', hostTarget, PREBUILD_FILE));
  const repacked = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--pack-destination', unpack, '--json'], pkgDir)) as { filename: string }[];
  return { file: path.join(unpack, repacked[0].filename), portable: false };
}

/** The paths inside a tarball, without the leading `package/`. */
export function tarballFiles(file: string): string[] {
  return execFileSync('tar', ['tzf', file], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.startsWith('package/') && !l.endsWith('/'))
    .map((l) => l.slice('package/'.length));
}

/** The npm CLI script of this node (so a wrapper can run it under another node). */
export function npmCli(): string {
  return fs.realpathSync(path.join(path.dirname(process.execPath), 'npm'));
}

/** A directory holding `node`, `npm` and the `sh` npm runs scripts with, and nothing else. */
export function toolchainFreeBin(tmp: string): string {
  const bin = fs.mkdtempSync(path.join(tmp, 'bin-'));
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(npmCli(), path.join(bin, 'npm'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
  return bin;
}

/** The commands found on `searchPath` among those a source build would need. */
export function buildToolsOn(searchPath: string): string[] {
  const tools = ['cc', 'gcc', 'g++', 'c++', 'clang', 'clang++', 'make', 'cmake', 'python', 'python3'];
  return tools.filter((t) => searchPath.split(path.delimiter).some((d) => fs.existsSync(path.join(d, t))));
}

export function freshProject(tmp: string, name: string): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true, version: '1.0.0' }));
  return dir;
}

/** name@version of every package under node_modules (nested ones too), and their size on disk. */
export function installedPackages(project: string): { packages: string[]; bytes: number } {
  const packages: string[] = [];
  let bytes = 0;
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isSymbolicLink()) continue;
      if (e.isDirectory()) walk(p);
      else bytes += fs.statSync(p).size;
    }
  };
  const visit = (modules: string): void => {
    if (!fs.existsSync(modules)) return;
    for (const e of fs.readdirSync(modules)) {
      if (e.startsWith('.')) continue;
      const dirs = e.startsWith('@') ? fs.readdirSync(path.join(modules, e)).map((s) => path.join(e, s)) : [e];
      for (const d of dirs) {
        const pj = path.join(modules, d, 'package.json');
        if (!fs.existsSync(pj)) continue;
        packages.push(`${d}@${(JSON.parse(fs.readFileSync(pj, 'utf8')) as { version: string }).version}`);
        visit(path.join(modules, d, 'node_modules'));
      }
    }
  };
  visit(path.join(project, 'node_modules'));
  walk(path.join(project, 'node_modules'));
  return { packages: packages.sort(), bytes };
}

/**
 * A consumer: two engines and a metadata server in one process; 1 MiB written from one to the other and
 * checked; a missing segment's error code; the binary node-gyp-build chose; the optional backends'
 * errors. Prints one JSON line.
 */
export function consumerScript(imp: string): string {
  return `${imp}
const meta = new MetadataServer({ logger: null });
const { url } = await meta.listen();
const a = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
const b = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
const ra = await a.allocateManagedBuffer(1 << 20);
const rb = await b.registerMemory(Buffer.alloc(1 << 20));
for (let i = 0; i < ra.buffer.length; i++) ra.buffer[i] = (i * 7 + 3) & 0xff;
const seg = await a.openSegment(b.localServerName);
await a.write(seg, [{ local: ra, remote: seg.address(0), length: 1 << 20 }]);
let err;
try { await a.openSegment('missing'); } catch (e) { err = e; }
const optional = {};
for (const conn of ['etcd://127.0.0.1:1', 'redis://127.0.0.1:1']) {
  try { createMetadataStore(conn).close(); optional[conn.split(':')[0]] = 'loaded'; } catch (e) { optional[conn.split(':')[0]] = e.code + ' ' + e.details?.package; }
}
const binding = require_('node-gyp-build').path(require_.resolve('mooncake-node/package.json').replace(/package\\.json$/, ''));
console.log(JSON.stringify({ ok: rb.buffer.equals(ra.buffer), code: err.code, isError: err instanceof MooncakeError, optional, arch: process.arch, binding: binding.split('/node_modules/mooncake-node/')[1] }));
await a.close(); await b.close(); await meta.close();
`;
}

export const esmConsumer = consumerScript(
  "import { TransferEngine, MetadataServer, MooncakeError, createMetadataStore } from 'mooncake-node';\nimport { createRequire } from 'node:module';\nconst require_ = createRequire(import.meta.url);",
);
export const cjsConsumer = `(async () => {\n${consumerScript(
  "const { TransferEngine, MetadataServer, MooncakeError, createMetadataStore } = require('mooncake-node');\nconst require_ = require;",
)}\n})();`;
