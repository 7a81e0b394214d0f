/**
 * Builds the CANN STAND-INS in test/native/standin/ for tests, into one directory named as such:
 *   libascendcl.so      ACL: host memory behind the ACL calls, device memory unaddressable from the
 *                       host, a current device required per thread (ascendcl_standin.cpp)
 *   libmetadef.so       ge::AscendString (metadef_standin.cpp)
 *   libllm_datadist.so  ADXL: moves bytes between processes over TCP (adxl_standin.cpp)
 * each with CANN's SONAME, so upstream's ascend_transport.so binds to them. Compiled once per content
 * hash into the temp directory; never shipped.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const dir = path.resolve(__dirname, '../native/standin');
const SOURCES = ['ascendcl_standin.cpp', 'metadef_standin.cpp', 'adxl_standin.cpp', 'ascend_string_standin.h'];

/** The directory holding the three stand-ins (built on first use). */
export function cannStandinDir(): string {
  const hash = createHash('sha256');
  for (const f of SOURCES) hash.update(fs.readFileSync(path.join(dir, f)));
  const out = path.join(os.tmpdir(), `mooncake-cann-standin-${hash.digest('hex').slice(0, 12)}`);
  if (fs.existsSync(path.join(out, 'libllm_datadist.so'))) return out;
  const tmp = `${out}.${process.pid}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  const cc = (soname: string, src: string, extra: string[] = []) =>
    execFileSync('g++', ['-std=c++17', '-O2', '-shared', '-fPIC', `-Wl,-soname,${soname}`, '-o', path.join(tmp, soname), path.join(dir, src), ...extra], { stdio: 'inherit' });
  cc('libascendcl.so', 'ascendcl_standin.cpp');
  cc('libmetadef.so', 'metadef_standin.cpp');
  cc('libllm_datadist.so', 'adxl_standin.cpp', [`-L${tmp}`, '-lascendcl', '-lmetadef', '-Wl,-rpath,$ORIGIN', '-pthread']);
  fs.writeFileSync(path.join(tmp, 'README'), 'STAND-INS for CANN (ACL, metadef, ADXL) built from test/native/standin/ by the tests. Not CANN.\n');
  try {
    fs.renameSync(tmp, out);
  } catch {
    fs.rmSync(tmp, { recursive: true, force: true }); // another worker built it first
  }
  return out;
}

/** The stand-in libascendcl.so (device memory for the built-in engine's tests). */
export function ascendStandin(): string {
  return path.join(cannStandinDir(), 'libascendcl.so');
}
