/**
 * Finds upstream Mooncake's `libtransfer_engine.so` inside an installed `mooncake-transfer-engine*`
 * wheel (vllm-ascend hosts have `mooncake-transfer-engine-npu`), and tells which wheel and version a
 * library path belongs to. The Python environment is asked through `importlib.metadata`, which
 * reads the installed distributions without importing (and so without loading) Mooncake itself.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Wheel versions whose C API and Ascend transport this package was tested against. */
export const TESTED_WHEEL_VERSIONS: readonly string[] = ['0.3.13.post1'];

export interface MooncakeWheel {
  /** Distribution name, e.g. `mooncake-transfer-engine-npu`. */
  package: string;
  version: string;
  /** `<site-packages>/mooncake/libtransfer_engine.so` */
  library: string;
  /** The interpreter that reported it (when found through Python). */
  python?: string;
}

const LOOKUP = `
import importlib.metadata as m, json, os
out = []
for d in m.distributions():
    name = d.metadata.get('Name') or ''
    if name.lower().replace('_', '-').startswith('mooncake-transfer-engine'):
        lib = str(d.locate_file('mooncake/libtransfer_engine.so'))
        out.append({'package': name, 'version': d.version, 'library': os.path.abspath(lib), 'exists': os.path.isfile(lib)})
print(json.dumps(out))
`;

/**
 * The wheel installed in `python`'s environment (default: `python3` on PATH), or why there is none.
 * When several are installed, the first whose library exists wins.
 */
export async function findMooncakeWheel(python = 'python3', timeoutMs = 20_000): Promise<MooncakeWheel | { reason: string }> {
  let stdout: string;
  try {
    stdout = await new Promise<string>((resolve, reject) => {
      execFile(python, ['-I', '-c', LOOKUP], { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, out, errOut) => {
        if (err) reject(Object.assign(err, { stderr: String(errOut) }));
        else resolve(String(out));
      });
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    const why = err.code === 'ENOENT' ? 'not found' : `failed: ${(err.stderr || err.message).trim().split('\n').pop()}`;
    return { reason: `Python interpreter '${python}' ${why}` };
  }
  let found: (MooncakeWheel & { exists: boolean })[];
  try {
    found = JSON.parse(stdout.trim().split('\n').pop() ?? '[]') as (MooncakeWheel & { exists: boolean })[];
  } catch {
    return { reason: `'${python}' printed something other than the wheel list: ${stdout.slice(0, 200)}` };
  }
  const usable = found.find((w) => w.exists);
  if (usable) return { package: usable.package, version: usable.version, library: usable.library, python };
  if (found.length > 0) {
    return { reason: `${found.map((w) => `${w.package} ${w.version}`).join(', ')} in '${python}' has no mooncake/libtransfer_engine.so (a wheel without the C API)` };
  }
  return { reason: `no mooncake-transfer-engine* wheel is installed for '${python}' (pip install mooncake-transfer-engine-npu on Ascend hosts)` };
}

/** The wheel a library path belongs to, read from the `.dist-info` beside its `mooncake/` directory. */
export function wheelOfLibrary(library: string): { package: string; version: string } | undefined {
  const site = path.dirname(path.dirname(path.resolve(library)));
  let entries: string[];
  try {
    entries = fs.readdirSync(site);
  } catch {
    return undefined;
  }
  for (const e of entries) {
    const m = /^(mooncake_transfer_engine[a-z0-9_]*)-(.+)\.dist-info$/.exec(e);
    if (!m) continue;
    const record = path.join(site, e, 'RECORD');
    // Only the distribution that installed this very file counts (several may share site-packages).
    try {
      if (!fs.readFileSync(record, 'utf8').includes(`mooncake/${path.basename(library)},`)) continue;
    } catch {
      continue;
    }
    return { package: m[1]!.replace(/_/g, '-'), version: m[2]! };
  }
  return undefined;
}
