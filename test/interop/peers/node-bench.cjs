// The Node side of test/interop/bench-upstream.test.ts: a TransferEngine (from dist/, so run
// `npm run build` first) bound to 127.0.0.1, as a bench target or initiator, driven by JSON lines.
//
// argv[2]: JSON {
//   mode: 'target' | 'initiator', metadataServer, name, bufferSize,
//   initiator only: segment, blockSize, batchSize, threads, phases: [{ operation, seconds }]
// }
// stdout, one JSON line each:
//   target:    { ready, segment, address, length, sha256 }   then, per "report" line on stdin,
//              { sha256, stats }; it closes its engine and exits when stdin ends.
//   initiator: { ready, segment }, then per phase { phase, operation, seconds, batches, bytes, errors,
//              firstError?, verified }, then { done: true } and exit.
// sha256 is over [0, blockSize*batchSize*threads) of the target buffer (what the bench touches).
'use strict';
const crypto = require('node:crypto');
const path = require('node:path');
const readline = require('node:readline');
const { TransferEngine } = require(path.join(__dirname, '../../../dist/index.js'));

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

async function target(engine) {
  const region = await engine.registerMemory(Buffer.alloc(cfg.bufferSize));
  crypto.randomFillSync(region.buffer);
  const round = Math.min(cfg.round || cfg.bufferSize, cfg.bufferSize);
  out({ ready: true, segment: engine.localServerName, address: region.address.toString(), length: region.length, sha256: sha(region.buffer.subarray(0, round)) });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() === 'report') out({ sha256: sha(region.buffer.subarray(0, round)), stats: engine.stats() });
  });
  await new Promise((resolve) => rl.once('close', resolve));
}

async function initiator(engine) {
  const { blockSize, batchSize, threads } = cfg;
  const round = blockSize * batchSize * threads;
  const local = await engine.registerMemory(Buffer.alloc(Math.max(cfg.bufferSize, round)));
  const check = await engine.registerMemory(Buffer.alloc(round));
  crypto.randomFillSync(local.buffer);
  const seg = await engine.openSegment(cfg.segment);
  out({ ready: true, segment: engine.localServerName });
  // As upstream's transfer_engine_bench: thread t, request i at offset block*(i*threads + t), same on both sides,
  // remote base = the target's buffers[0].
  const base = seg.buffers[0].address;
  if (seg.buffers[0].length < round) throw new Error(`the target's first buffer (${seg.buffers[0].length} B) is smaller than one round (${round} B)`);
  const wrote = sha(local.buffer.subarray(0, round));
  let wroteOnce = false;
  for (const { operation, seconds } of cfg.phases) {
    const batches = Array.from({ length: threads }, (_, t) =>
      engine.prepareBatch(seg, operation, Array.from({ length: batchSize }, (_, i) => {
        const off = blockSize * (i * threads + t);
        return { local, localOffset: off, remote: base + BigInt(off), length: blockSize };
      })),
    );
    let count = 0;
    let errors = 0;
    let firstError;
    const t0 = process.hrtime.bigint();
    const deadline = t0 + BigInt(Math.round(seconds * 1e9));
    await Promise.all(batches.map(async (b) => {
      while (errors === 0 && process.hrtime.bigint() < deadline) {
        try {
          await engine.submitPrepared(b);
          count++;
        } catch (err) {
          errors++;
          firstError = firstError || { code: err.code, message: err.message };
        }
      }
    }));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    // Data check: after a write phase the target holds our bytes (read them back); a read phase after
    // a write brings the same bytes back into our buffer.
    let verified;
    if (errors === 0 && operation === 'write') {
      await engine.read(seg, [{ local: check, remote: base, length: round }]);
      verified = sha(check.buffer) === wrote;
      wroteOnce = true;
    } else if (errors === 0 && wroteOnce) {
      verified = sha(local.buffer.subarray(0, round)) === wrote;
    }
    out({ phase: true, operation, seconds: secs, batches: count, bytes: count * batchSize * blockSize, errors, firstError, verified });
  }
  out({ done: true, stats: engine.stats() });
}

async function main() {
  const engine = await TransferEngine.create({
    metadataServer: cfg.metadataServer,
    localServerName: cfg.name,
    bindAddress: '127.0.0.1',
    advertiseAddress: '127.0.0.1',
  });
  try {
    if (cfg.mode === 'target') await target(engine);
    else await initiator(engine);
  } finally {
    await engine.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    out({ error: { code: err.code, message: String(err.message || err) } });
    process.exit(1);
  },
);
