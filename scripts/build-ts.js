#!/usr/bin/env node
// Compiles lib/ to CommonJS in dist/ (with .d.ts), then writes the ESM entry points: dist/index.mjs
// re-exports the CommonJS module's names (one copy of every class, so instanceof works across both),
// and dist/index.d.mts re-exports the types.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
fs.rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { stdio: 'inherit', cwd: root });

// Loading dist/index.js does not load the native addon (that happens on first engine use).
const names = Object.keys(require(path.join(dist, 'index.js'))).filter((n) => n !== 'default' && n !== '__esModule');
const mjs = [
  "import cjs from './index.js';",
  `export const { ${names.join(', ')} } = cjs;`,
  'export default cjs;',
  '',
].join('\n');
fs.writeFileSync(path.join(dist, 'index.mjs'), mjs);
fs.writeFileSync(path.join(dist, 'index.d.mts'), "export * from './index.js';\nexport { default } from './index.js';\n");
fs.chmodSync(path.join(dist, 'cli.js'), 0o755);
console.log(`dist/: CommonJS + ESM entry (${names.length} exports)`);
