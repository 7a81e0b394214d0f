#!/usr/bin/env node
// One-machine prefill/decode disaggregation with mooncake-node, set up like the Ascend PD guide:
//   1. an embedded HTTP metadata server and a mooncake.json pointing at it (MOONCAKE_CONFIG_PATH);
//   2. a prefill instance and a decode instance (worker.mjs), each dp 2 × tp 2, started with the guide's
//      --kv-transfer-config (kv_producer engine "0", kv_consumer engine "1");
//   3. the PD proxy (lib/proxy) in front of them; OpenAI requests go through it (pull mode);
//      with --mode push the client talks to the decode instance, which asks the prefill to push;
//   4. a client sending --requests completions, --concurrency at a time; every decode rank checks every
//      KV byte it received. Prints the KV throughput.
//
// Usage: node examples/pd-disaggregation/demo.mjs [--mode pull|push] [--requests 64] [--concurrency 8]
//                                                 [--prompt-tokens 512] [--max-tokens 16]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MetadataServer, createProxy } from 'mooncake-node';
import { MODEL, kvBytesPerToken } from './model.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: opt } = parseArgs({
  options: {
    mode: { type: 'string', default: 'pull' },
    requests: { type: 'string', default: '64' },
    concurrency: { type: 'string', default: '8' },
    'prompt-tokens': { type: 'string', default: '512' },
    'max-tokens': { type: 'string', default: '16' },
  },
});
const mode = opt.mode;
if (mode !== 'pull' && mode !== 'push') throw new Error('--mode must be pull or push');
const N = Number(opt.requests);
const C = Number(opt.concurrency);
const promptTokens = Number(opt['prompt-tokens']);
const maxTokens = Number(opt['max-tokens']);

const MiB = 1024 * 1024;
const fmt = (b) => (b >= 1024 * MiB ? `${(b / 1024 / MiB).toFixed(2)} GiB` : `${(b / MiB).toFixed(1)} MiB`);

// The guide's --kv-transfer-config, minus kv_port (both instances share this host: free ports instead).
function kvTransferConfig(role, engineId) {
  return JSON.stringify({
    kv_connector: mode === 'push' ? 'MooncakeLayerwiseConnector' : 'MooncakeConnectorV1',
    kv_buffer_device: 'cpu',
    kv_role: role,
    kv_parallel_size: 1,
    engine_id: engineId,
    kv_rank: role === 'kv_producer' ? 0 : 1,
    kv_connector_extra_config: { prefill: { dp_size: 2, tp_size: 2 }, decode: { dp_size: 2, tp_size: 2 } },
  });
}

function startWorker(role, configPath, extraArgs = []) {
  const child = spawn(process.execPath, [path.join(here, 'worker.mjs'), '--role', role, '--kv-transfer-config', kvTransferConfig(role === 'prefill' ? 'kv_producer' : 'kv_consumer', role === 'prefill' ? '0' : '1'), ...extraArgs], {
    env: { ...process.env, MOONCAKE_CONFIG_PATH: configPath },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${role} worker did not start`));
    }, 60_000);
    child.once('exit', (code) => reject(new Error(`${role} worker exited (${code})`)));
    readline.createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(t);
      resolve({ child, ...JSON.parse(line) });
    });
  });
}

async function stopWorker(w) {
  if (w.child.exitCode !== null) return;
  const exited = new Promise((r) => w.child.once('exit', r));
  w.child.stdin.end();
  const t = setTimeout(() => w.child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

const words = 'the quick brown fox jumps over the lazy dog while prefill and decode trade their caches'.split(' ');
function prompt(i) {
  // ~promptTokens tokens (4 bytes each), varied ±25% so block counts differ.
  const bytes = Math.round(promptTokens * 4 * (0.75 + ((i * 37) % 51) / 100));
  let s = `request ${i}:`;
  for (let k = 0; s.length < bytes; k++) s += ' ' + words[(i + k) % words.length];
  return s.slice(0, bytes);
}

const meta = new MetadataServer({ logger: null });
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-pd-demo-'));
const workers = [];
let proxy;
try {
  const { url } = await meta.listen(0, '127.0.0.1');
  const configPath = path.join(dir, 'mooncake.json');
  fs.writeFileSync(configPath, JSON.stringify({ prefill_url: '127.0.0.1:15272', decode_url: '127.0.0.1:14012', metadata_backend: 'http', metadata_server: url, protocol: 'tcp' }, null, 2));
  const prefill = await startWorker('prefill', configPath);
  workers.push(prefill);
  const decode = await startWorker('decode', configPath, ['--warm-up', '0', ...(mode === 'push' ? ['--prefill-url', `http://127.0.0.1:${prefill.port}`] : [])]);
  workers.push(decode);
  let target = `http://127.0.0.1:${decode.port}`;
  if (mode === 'pull') {
    proxy = createProxy({ host: '127.0.0.1', port: 0, prefill: [`127.0.0.1:${prefill.port}`], decode: [`127.0.0.1:${decode.port}`], log: () => undefined });
    const a = await proxy.listen();
    target = `http://127.0.0.1:${a.port}`;
  }
  console.log(`mooncake-node PD disaggregation demo (${mode}${mode === 'pull' ? ', through the PD proxy' : ', decode asks prefill to push'})`);
  console.log(`  metadata server   ${url}  (mooncake.json: ${configPath})`);
  console.log(`  prefill instance  http://127.0.0.1:${prefill.port}  engine_id 0, kv_producer, dp 2 × tp 2 → ${prefill.keys.length} rank engines`);
  console.log(`  decode instance   http://127.0.0.1:${decode.port}  engine_id 1, kv_consumer, dp 2 × tp 2 → ${decode.keys.length} rank engines`);
  if (proxy) console.log(`  PD proxy          ${target}`);
  console.log(`  model             ${MODEL.numLayers} layers, ${MODEL.totalKvHeads} KV heads × ${MODEL.headDim} fp16, ${MODEL.blockSize}-token blocks: ${kvBytesPerToken(2) / 1024} KiB KV per token per tp rank`);
  console.log(`  registry keys     ${prefill.keys[0]} … ${decode.keys.at(-1)}`);

  let next = 0;
  let ok = 0;
  let failed = 0;
  const errors = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        const i = next++;
        try {
          const res = await fetch(`${target}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: MODEL.name, prompt: prompt(i), max_tokens: maxTokens }),
          });
          const body = await res.json();
          if (res.ok && body.kv && body.kv.mismatches === 0 && body.kv.failedBlocks === 0 && body.choices?.[0]?.text) ok++;
          else {
            failed++;
            errors.push(`${res.status} ${JSON.stringify(body).slice(0, 200)}`);
          }
        } catch (err) {
          failed++;
          errors.push(String(err));
        }
      }
    }),
  );
  const wallMs = performance.now() - t0;
  const dstats = await (await fetch(`http://127.0.0.1:${decode.port}/kv/stats`)).json();
  // "done" travels on its own after each pull: give the prefill a moment (bounded) to release the last holds.
  let pstats;
  for (const until = Date.now() + 5000; ; ) {
    pstats = await (await fetch(`http://127.0.0.1:${prefill.port}/kv/stats`)).json();
    if (mode === 'push' || pstats.ranks.every((r) => (r.metrics.holds?.active ?? 0) === 0) || Date.now() > until) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const s = mode === 'pull' ? dstats : pstats; // the side that ran the transfers
  const releasedTotal = Object.values(pstats.released).reduce((a, b) => a + b, 0);
  const heldNow = pstats.ranks.reduce((a, r) => a + (r.metrics.holds?.active ?? 0), 0);

  console.log(`requests          ${N} (concurrency ${C}, ~${promptTokens}-token prompts, ${maxTokens} tokens out): ${ok} ok, ${failed} failed`);
  console.log(`KV verified       ${dstats.verifiedRequests}/${N} requests: every byte of every (layer, K/V, block, head, token) on both tp ranks of the dp group; ${dstats.mismatches} mismatches, ${dstats.failedBlocks} failed blocks`);
  console.log(`KV moved          ${fmt(s.kvBytes)} in ${s.transfers} batches (one per request and peer), ${s.ranges} ranges`);
  console.log(`KV throughput     ${fmt((s.kvBytes / s.busyMs) * 1000)}/s while transfers were in flight (${(s.busyMs / 1000).toFixed(2)} s); ${fmt((s.kvBytes / wallMs) * 1000)}/s over the whole ${(wallMs / 1000).toFixed(2)} s run`);
  console.log(`transfer latency  p50 ${s.latencyMs.p50.toFixed(1)} ms, p99 ${s.latencyMs.p99.toFixed(1)} ms per request (all tp ranks of a dp group)`);
  if (mode === 'pull') console.log(`prefill blocks    ${releasedTotal} holds released (${Object.entries(pstats.released).map(([k, v]) => `${k} ${v}`).join(', ')}), ${heldNow} still held`);
  for (const e of errors.slice(0, 5)) console.log(`  error: ${e}`);
  process.exitCode = failed === 0 && dstats.mismatches === 0 ? 0 : 1;
} finally {
  await proxy?.close();
  await Promise.all(workers.map(stopWorker));
  await meta.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
