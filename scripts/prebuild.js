#!/usr/bin/env node
// Builds the prebuilt addons the npm package ships, so installing it needs no compiler:
//
//   prebuilds/linux-x64/mooncake-node.glibc.node
//   prebuilds/linux-arm64/mooncake-node.glibc.node
//
// Each is CMakeLists.txt's addon (through cmake-js), compiled by zig's clang for `<arch>-linux-gnu.2.28`:
// zig links against glibc stubs generated for exactly that version, so a symbol newer than glibc 2.28
// fails the link instead of slipping into the binary, and it links its own C++ runtime (libc++,
// libc++abi, libunwind) statically, so the addon needs no libstdc++ at all. The same host builds both
// architectures. scripts/check-prebuilds.js then reads each binary's symbol versions and fails the build
// on anything above the baseline.
//
//   node scripts/prebuild.js                      # both targets (npm pack runs this through prepack)
//   node scripts/prebuild.js --target linux-arm64
//
// zig comes from PyPI's `ziglang` wheel, installed on first use into .venv-prebuild/ (or set ZIG to a zig
// binary of the pinned version).
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { checkPrebuilds, GLIBC_BASELINE } = require('./check-prebuilds');

const root = path.join(__dirname, '..');
const ZIG_VERSION = '0.14.1';
const ADDON = 'mooncake-node.glibc.node';
const TARGETS = {
  'linux-x64': { triple: 'x86_64-linux-gnu', processor: 'x86_64', arch: 'x64' },
  'linux-arm64': { triple: 'aarch64-linux-gnu', processor: 'aarch64', arch: 'arm64' },
};

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const targets = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--target' && TARGETS[argv[i + 1]]) targets.push(argv[++i]);
    else fail(`unknown argument '${argv[i]}' (use --target ${Object.keys(TARGETS).join('|')})`);
  }
  return targets.length ? targets : Object.keys(TARGETS);
}

/** The zig binary: $ZIG, else the pinned wheel in .venv-prebuild/ (installed on first use). */
function findZig() {
  if (process.env.ZIG) return process.env.ZIG;
  const venv = path.join(root, '.venv-prebuild');
  const python = path.join(venv, 'bin', 'python');
  const locate = () => {
    const r = spawnSync(python, ['-c', 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))'], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout.trim() : undefined;
  };
  let zig = fs.existsSync(python) ? locate() : undefined;
  if (zig && zigVersion(zig) === ZIG_VERSION) return zig;
  console.log(`prebuild: installing zig ${ZIG_VERSION} (PyPI ziglang) into .venv-prebuild/`);
  if (!fs.existsSync(python)) execFileSync('python3', ['-m', 'venv', venv], { stdio: 'inherit' });
  execFileSync(python, ['-m', 'pip', 'install', '-q', '--disable-pip-version-check', `ziglang==${ZIG_VERSION}`], { stdio: 'inherit' });
  zig = locate();
  if (!zig) fail('ziglang installed but its zig binary was not found');
  return zig;
}

function zigVersion(zig) {
  const r = spawnSync(zig, ['version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Compiler wrappers and a CMake toolchain file that point CMake at zig for one target. */
function writeToolchain(dir, zig, target) {
  const { triple, processor } = TARGETS[target];
  fs.mkdirSync(dir, { recursive: true });
  const wrap = (name, args) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, `#!/bin/sh\nexec ${JSON.stringify(zig)} ${args} "$@"\n`, { mode: 0o755 });
    return file;
  };
  const cc = wrap('cc', `cc -target ${triple}.${GLIBC_BASELINE}`);
  const cxx = wrap('c++', `c++ -target ${triple}.${GLIBC_BASELINE}`);
  const ar = wrap('ar', 'ar');
  const ranlib = wrap('ranlib', 'ranlib');
  const toolchain = path.join(dir, 'toolchain.cmake');
  fs.writeFileSync(
    toolchain,
    [
      `set(CMAKE_SYSTEM_NAME Linux)`,
      `set(CMAKE_SYSTEM_PROCESSOR ${processor})`,
      `set(CMAKE_C_COMPILER "${cc}")`,
      `set(CMAKE_CXX_COMPILER "${cxx}")`,
      `set(CMAKE_AR "${ar}" CACHE FILEPATH "")`,
      `set(CMAKE_RANLIB "${ranlib}" CACHE FILEPATH "")`,
      // Stripped: the prebuild ships without symbols (as prebuildify --strip does).
      `set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,--strip-all")`,
      '',
    ].join('\n'),
  );
  return toolchain;
}

function build(target, zig) {
  const work = path.join(root, 'build-prebuild', target);
  const toolchain = writeToolchain(path.join(work, 'toolchain'), zig, target);
  const out = path.join(work, 'build');
  const started = Date.now();
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  const r = spawnSync(process.execPath, [cmakeJs, 'compile', '-O', out, '--arch', TARGETS[target].arch, `--CDCMAKE_TOOLCHAIN_FILE=${toolchain}`], {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0) fail(`cmake-js failed for ${target} (exit ${r.status})`);
  const dest = path.join(root, 'prebuilds', target);
  fs.mkdirSync(dest, { recursive: true });
  fs.copyFileSync(path.join(out, 'Release', 'mooncake_node.node'), path.join(dest, ADDON));
  console.log(`prebuild: ${target} built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  return path.join(dest, ADDON);
}

function main() {
  const targets = parseArgs(process.argv.slice(2));
  const zig = findZig();
  console.log(`prebuild: zig ${zigVersion(zig)}, glibc baseline ${GLIBC_BASELINE}, targets ${targets.join(' ')}`);
  const files = targets.map((t) => build(t, zig));
  if (!checkPrebuilds(files)) fail('a prebuild needs more than the baseline allows (table above)');
}

main();
