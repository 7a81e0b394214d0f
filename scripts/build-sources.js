#!/usr/bin/env node
// Lists the C++ sources of the addon for binding.gyp (gyp has no globbing); CMakeLists.txt globs the
// same directories, so both builds compile the same files.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const dirs = ['native/engine', 'native/engine/tcp', 'native/engine/bench', 'native/engine/upstream', 'native/engine/device', 'native/addon'];
const out = [];
for (const d of dirs) {
  const abs = path.join(root, d);
  if (!fs.existsSync(abs)) continue;
  for (const f of fs.readdirSync(abs).sort()) if (f.endsWith('.cpp')) out.push(`${d}/${f}`);
}
process.stdout.write(out.join(' '));
