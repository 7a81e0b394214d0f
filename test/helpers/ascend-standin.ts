/**
 * Builds the STAND-IN libascendcl (test/native/standin/ascendcl_standin.cpp) for tests: host memory
 * behind the ACL calls, device memory unaddressable from the host, a current device required per
 * thread. Compiled once per content hash into the temp directory.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const source = path.resolve(__dirname, '../native/standin/ascendcl_standin.cpp');

export function ascendStandin(): string {
  const text = fs.readFileSync(source);
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 12);
  const out = path.join(os.tmpdir(), `mooncake-ascendcl-standin-${hash}.so`);
  if (!fs.existsSync(out)) {
    const tmp = `${out}.${process.pid}.tmp`;
    execFileSync('g++', ['-std=c++17', '-O2', '-shared', '-fPIC', '-o', tmp, source], { stdio: 'inherit' });
    fs.renameSync(tmp, out);
  }
  return out;
}
