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
const nodeGyp = process.env.npm_config_node_gyp || 'node-gyp';
const args = fresh ? ['rebuild', '-j', 'max'] : ['build', '-j', 'max'];
const isJs = nodeGyp.endsWith('.js');
const r = spawnSync(isJs ? process.execPath : nodeGyp, isJs ? [nodeGyp, ...args] : args, { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
fs.writeFileSync(stamp, key);
