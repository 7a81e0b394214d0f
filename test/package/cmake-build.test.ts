// The CMakeLists.txt the package ships builds the same addon with cmake-js from the files that ship (the
// tarball unpacked: no test/ there), the addon exports Node-API's entry points only, and it passes a real
// transfer.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packedTarball } from './packed';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { inspect } = require('../../scripts/check-prebuilds.js') as { inspect(file: string): { exports: string[]; needed: string[] } };

const root = path.resolve(__dirname, '..', '..');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-cmake-'));
afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

describe('cmake-js build', () => {
  it('compiles the addon through the shipped CMakeLists.txt and moves bytes with it', () => {
    const packed = packedTarball(out, 'cmake-build');
    execFileSync('tar', ['xzf', packed.file, '-C', out]);
    const pkgDir = path.join(out, 'package');
    expect(fs.existsSync(path.join(pkgDir, 'test'))).toBe(false);
    // node-addon-api is a dependency of the package; here it comes from the checkout's install.
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(pkgDir, 'node_modules'));
    const buildDir = path.join(out, 'build');
    const build = spawnSync(process.execPath, [path.join(root, 'node_modules/cmake-js/bin/cmake-js'), 'compile', '-O', buildDir], { cwd: pkgDir, encoding: 'utf8', timeout: 600_000 });
    expect(build.status, build.stdout + build.stderr).toBe(0);
    const addon = path.join(buildDir, 'Release', 'mooncake_node.node');
    expect(fs.existsSync(addon)).toBe(true);
    expect(inspect(addon).exports.sort()).toEqual(['napi_register_module_v1', 'node_api_module_get_api_version_v1']);
    const script = `
      const { TransferEngine } = require(${JSON.stringify(path.join(root, 'dist/index.js'))});
      (async () => {
        const a = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
        const b = await TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
        const ra = await a.registerMemory(Buffer.alloc(65536, 7));
        const rb = await b.registerMemory(Buffer.alloc(65536));
        const seg = await a.openSegment(b.localServerName);
        await a.write(seg, [{ local: ra, remote: seg.address(0), length: 65536 }]);
        console.log(rb.buffer.every((x) => x === 7));
        await a.close(); await b.close();
      })();`;
    // node-gyp-build's <PKGNAME>_PREBUILD override points the package at this directory's build/Release.
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, MOONCAKE_NODE_PREBUILD: out }, timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('true');
  }, 700_000);
});
