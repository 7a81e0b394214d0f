#!/usr/bin/env node
// PUT latency of the HTTP metadata server with --data-dir (the append-only log) at 1, 100 and 1000
// stored entries, against the same server without persistence measured in the same run.
//
// Usage: node scripts/bench-metadata.js [--value-bytes 1048576] [--fill 0x01] [--puts 30] [--sizes 1,100,1000]
//                                       [--dir /tmp] [--json out.json]
// Needs a built tree (npm run build). For each store size N it starts a fresh server, fills it with
// N entries of --value-bytes (byte --fill; 0x01 is what grows 6x under JSON escaping), then times
// --puts PUTs that overwrite stored keys (the store stays at N entries) and as many PUTs of new keys.
// Prints medians and p90s, and the ratio to the in-memory server at the same N.
'use strict';
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { MetadataServer } = require(path.join(__dirname, '..', 'dist', 'index.js'));

const { values: args } = parseArgs({
  options: {
    'value-bytes': { type: 'string', default: String(1 << 20) },
    fill: { type: 'string', default: '0x01' },
    puts: { type: 'string', default: '30' },
    sizes: { type: 'string', default: '1,100,1000' },
    dir: { type: 'string', default: os.tmpdir() },
    json: { type: 'string' },
  },
});
const VALUE = Buffer.alloc(Number(args['value-bytes']), Number(args.fill));
const PUTS = Number(args.puts);
const SIZES = args.sizes.split(',').map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function put(port, key, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: `/metadata?key=${encodeURIComponent(key)}`, agent, headers: { 'Content-Length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`PUT ${key}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

async function measure(n, dataDir) {
  const server = new MetadataServer({ logger: null, dataDir, maxStoreBytes: 2 * 1024 * 1024 * 1024 });
  const { port } = await server.listen(0, '127.0.0.1');
  try {
    for (let i = 0; i < n; i++) await put(port, `mooncake/ram/fill-${i}`, VALUE);
    const overwrite = [];
    const fresh = [];
    for (let i = 0; i < PUTS; i++) {
      let t = process.hrtime.bigint();
      await put(port, `mooncake/ram/fill-${i % n}`, VALUE);
      overwrite.push(Number(process.hrtime.bigint() - t) / 1e6);
      t = process.hrtime.bigint();
      await put(port, `mooncake/ram/new-${i}`, VALUE);
      fresh.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    const st = server.stats();
    return { overwrite, fresh, logBytes: st.logBytes, rss: process.memoryUsage().rss };
  } finally {
    await server.close();
  }
}

async function main() {
  const rows = [];
  console.log(`metadata PUT latency: values of ${VALUE.length} bytes of 0x${VALUE[0]?.toString(16).padStart(2, '0')}, ${PUTS} overwrites + ${PUTS} new keys per size (ms; median / p90)`);
  for (const n of SIZES) {
    const dir = fs.mkdtempSync(path.join(args.dir, 'mc-bench-meta-'));
    try {
      const mem = await measure(n);
      const disk = await measure(n, dir);
      const row = {
        entries: n,
        memory: { overwriteMedian: quantile(mem.overwrite, 0.5), newMedian: quantile(mem.fresh, 0.5) },
        dataDir: {
          overwriteMedian: quantile(disk.overwrite, 0.5),
          overwriteP90: quantile(disk.overwrite, 0.9),
          newMedian: quantile(disk.fresh, 0.5),
          newP90: quantile(disk.fresh, 0.9),
          logBytes: disk.logBytes,
        },
      };
      rows.push(row);
      const f = (x) => x.toFixed(2).padStart(7);
      console.log(
        `  ${String(n).padStart(5)} entries: --data-dir overwrite ${f(row.dataDir.overwriteMedian)} / ${f(row.dataDir.overwriteP90)}, new key ${f(row.dataDir.newMedian)} / ${f(row.dataDir.newP90)}; ` +
          `in memory ${f(row.memory.overwriteMedian)} / ${f(row.memory.newMedian)}; ratio ${(row.dataDir.overwriteMedian / row.memory.overwriteMedian).toFixed(1)}x; log ${(disk.logBytes / 1048576).toFixed(0)} MiB`,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const first = rows[0];
  const last = rows[rows.length - 1];
  console.log(`  growth from ${first.entries} to ${last.entries} entries (median overwrite, --data-dir): ${(last.dataDir.overwriteMedian / first.dataDir.overwriteMedian).toFixed(2)}x`);
  if (args.json) fs.writeFileSync(args.json, JSON.stringify({ valueBytes: VALUE.length, fill: VALUE[0], puts: PUTS, rows }, null, 2));
  agent.destroy();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
