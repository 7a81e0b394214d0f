#!/usr/bin/env node
// Builds the addon with node-gyp: a full configure+build the first time or when the source list or
// binding.gyp changed, an incremental build otherwise (so `npm test` does not recompile everything).
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const stamp = path.join(root, 'build', '.sources');
const sources = execFileSync(process.execPath, [path.join(__dirname, 'build-sources.js')], { cwd: root }).toString();
const gyp = fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8');
const key = sources + '\n' + gyp;
const fresh = !fs.existsSync(path.join(root, 'build', 'Makefile')) || !fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== key;
// npm sets npm_config_node_gyp; run directly, use the node-gyp bundled with this node's npm, else PATH.
const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodeGyp = process.env.npm_config_node_gyp || (fs.existsSync(bundled) ? bundled : 'node-gyp');
const args = fresh ? ['rebuild', '-j', 'max'] : ['build', '-j', 'max'];
const isJs = nodeGyp.endsWith('.js');
const r = spawnSync(isJs ? process.execPath : nodeGyp, isJs ? [nodeGyp, ...args] : args, { cwd: root, stdio: 'inherit' });
if (r.error) {
  console.error(`build-native: cannot run ${nodeGyp}: ${r.error.message} (run \`npm run build:native\`, or install node-gyp)`);
  process.exit(1);
}
if (r.status !== 0) process.exit(r.status ?? 1);
fs.writeFileSync(stamp, key);
