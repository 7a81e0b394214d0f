#!/usr/bin/env node
// Checks what each prebuilt addon asks of the system that loads it, from its dynamic section and symbol
// versions (objdump -T / -p), and prints one line per binary:
//
//   - the highest GLIBC_ version it needs: at most GLIBC_BASELINE (so it loads on RHEL/Rocky/Alma 8,
//     Debian 10, Ubuntu 18.10, openEuler 20.03 and anything newer);
//   - no GLIBCXX_ or CXXABI_ version at all, and no libstdc++ or libgcc_s among its NEEDED libraries (the
//     C++ runtime is linked in, so the system's libstdc++ does not matter);
//   - NEEDED libraries from glibc only;
//   - exported symbols: Node-API's entry points only;
//   - ELF machine matching the directory it sits in (prebuilds/linux-x64 is x86-64, linux-arm64 AArch64).
//
//   node scripts/check-prebuilds.js                 # every prebuilds/*/*.node
//   node scripts/check-prebuilds.js path/to/x.node  # particular files
//
// Exit status 1 when any binary breaks a rule.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const GLIBC_BASELINE = '2.28';
const GLIBC_LIBS = /^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-(x86-64|aarch64)\.so\.[12])$/;
const EXPORTS = /^(napi_register_module_v\d+|node_api_module_get_api_version_v\d+)$/;
const MACHINES = { 62: 'x64', 183: 'arm64' };

function compareVersions(a, b) {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** What one binary needs: highest version per family (with the symbol that needs it), NEEDED, exports. */
function inspect(file) {
  const header = fs.readFileSync(file).subarray(0, 20);
  if (header.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file} is not an ELF file`);
  const machine = MACHINES[header.readUInt16LE(18)] ?? `e_machine ${header.readUInt16LE(18)}`;
  const symbols = execFileSync('objdump', ['-T', file], { encoding: 'utf8' });
  const highest = {};
  const exports = [];
  for (const line of symbols.split('\n')) {
    const m = /\s(\*UND\*|\S+)\s+[0-9a-f]+\s+(?:\(?((GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+))\)?|Base|\S+)?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const [, section, , family, version, name] = m;
    if (family) {
      if (!highest[family] || compareVersions(version, highest[family].version) > 0) highest[family] = { version, symbol: name };
    }
    if (section !== '*UND*') exports.push(name);
  }
  const dynamic = execFileSync('objdump', ['-p', file], { encoding: 'utf8' });
  const needed = [...dynamic.matchAll(/^\s+NEEDED\s+(\S+)$/gm)].map((m) => m[1]);
  return { file, machine, highest, needed, exports };
}

/** The rules a shipped prebuild must meet; an empty list means it passes. */
function violations(info) {
  const out = [];
  const dirArch = path.basename(path.dirname(info.file)).replace(/^linux-/, '');
  if (info.machine !== dirArch) out.push(`ELF machine ${info.machine} in a linux-${dirArch} directory`);
  const glibc = info.highest.GLIBC;
  if (glibc && compareVersions(glibc.version, GLIBC_BASELINE) > 0) out.push(`needs GLIBC_${glibc.version} (${glibc.symbol}), above ${GLIBC_BASELINE}`);
  for (const family of ['GLIBCXX', 'CXXABI']) {
    if (info.highest[family]) out.push(`needs the system's libstdc++ (${family}_${info.highest[family].version}, ${info.highest[family].symbol})`);
  }
  for (const lib of info.needed) if (!GLIBC_LIBS.test(lib)) out.push(`NEEDED ${lib} is not part of glibc`);
  const extra = info.exports.filter((s) => !EXPORTS.test(s));
  if (extra.length) out.push(`exports ${extra.length} symbols beyond Node-API's entry points (${extra.slice(0, 3).join(', ')}...)`);
  if (!info.exports.some((s) => s.startsWith('napi_register_module_v'))) out.push('does not export napi_register_module_v1');
  return out;
}

const show = (h) => (h ? `${h.version} (${h.symbol})` : 'none');

/** Prints one line per file and its problems; true when every file passes. */
function checkPrebuilds(files) {
  let ok = true;
  for (const file of files) {
    const info = inspect(file);
    const problems = violations(info);
    ok &&= problems.length === 0;
    console.log(
      `${path.relative(process.cwd(), file)}: ${info.machine}, GLIBC ${show(info.highest.GLIBC)}, GLIBCXX ${show(info.highest.GLIBCXX)}, ` +
        `CXXABI ${show(info.highest.CXXABI)}, NEEDED ${info.needed.join(' ')}, ` +
        `exports ${info.exports.length <= 4 ? info.exports.join(' ') : `${info.exports.length} symbols`}` +
        (problems.length ? `\n  FAIL: ${problems.join('\n  FAIL: ')}` : ''),
    );
  }
  return ok;
}

module.exports = { GLIBC_BASELINE, inspect, violations, checkPrebuilds };

if (require.main === module) {
  let files = process.argv.slice(2);
  if (files.length === 0) {
    const dir = path.join(__dirname, '..', 'prebuilds');
    files = fs.existsSync(dir) ? fs.readdirSync(dir).flatMap((d) => fs.readdirSync(path.join(dir, d)).filter((f) => f.endsWith('.node')).map((f) => path.join(dir, d, f))) : [];
  }
  if (files.length === 0) {
    console.error('check-prebuilds: no prebuilds to check (run `node scripts/prebuild.js`)');
    process.exit(1);
  }
  process.exit(checkPrebuilds(files) ? 0 : 1);
}
