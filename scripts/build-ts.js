#!/usr/bin/env node
// Compiles lib/ to CommonJS in dist/ (with .d.ts), then writes the ESM entry points: dist/<entry>.mjs
// re-exports the CommonJS module's names (one copy of every class, so instanceof works across both),
// and dist/<entry>.d.mts re-exports the types. The entries: index (the package), compat (mooncake-node/compat).
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
fs.rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { stdio: 'inherit', cwd: root });

// One ESM wrapper per entry point (the package's exports). Loading them does not load the native
// addon (that happens on first engine use).
for (const entry of ['index', 'compat']) {
  const names = Object.keys(require(path.join(dist, `${entry}.js`))).filter((n) => n !== 'default' && n !== '__esModule');
  const mjs = [
    `import cjs from './${entry}.js';`,
    `export const { ${names.join(', ')} } = cjs;`,
    'export default cjs;',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(dist, `${entry}.mjs`), mjs);
  fs.writeFileSync(path.join(dist, `${entry}.d.mts`), `export * from './${entry}.js';\nexport { default } from './${entry}.js';\n`);
  console.log(`dist/${entry}: CommonJS + ESM entry (${names.length} exports)`);
}
fs.chmodSync(path.join(dist, 'cli.js'), 0o755);
