#!/usr/bin/env node
// A simulated vLLM instance (prefill or decode) with an OpenAI-style HTTP API whose KV cache moves with
// mooncake-node. It is configured exactly like the Ascend PD guide's workers: `--kv-transfer-config '<json>'` and
// MOONCAKE_CONFIG_PATH=mooncake.json. It hosts every dp × tp rank of the instance in this process (one
// KvProducer or KvConsumer per rank, each with its own engine).
//
//   prefill: "computes" the prompt's KV (a deterministic pattern per layer, K/V, block, head, token), holds
//            the blocks and answers with kv_transfer_params (pull), or writes them into the decode's blocks
//            when the request carries the decode's params (push);
//   decode:  pulls the KV named by kv_transfer_params on every tp rank, checks every byte, recomputes
//            blocks that failed, then "generates" max_tokens tokens. With --prefill-url and no params it
//            runs the push flow itself (it assigns blocks, asks the prefill to push, waits).
//
// Usage: node worker.mjs --role prefill|decode --kv-transfer-config '<json>' [--port 0] [--prefill-url URL]
//                       [--warm-up <engine id of the other instance>]
// Prints one JSON line {ready, port} when serving; exits when stdin closes or on SIGTERM.
import * as http from 'node:http';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import {
  KvConsumer,
  KvProducer,
  checkKvPattern,
  fillKvPattern,
  heldHeads,
  kvOptionsFromConfig,
  loadMooncakeConfig,
  parseKvTransferConfig,
  patternSeed,
  wantsRemotePrefill,
} from 'mooncake-node';
import { BlockPool, MODEL, layoutFor, promptTokens } from './model.mjs';

const { values: args } = parseArgs({
  options: {
    role: { type: 'string' },
    port: { type: 'string', default: '0' },
    'kv-transfer-config': { type: 'string' },
    'prefill-url': { type: 'string' },
    'warm-up': { type: 'string' },
  },
});
const transfer = parseKvTransferConfig(args['kv-transfer-config'] ?? '');
const mooncake = loadMooncakeConfig();
const role = args.role;
if (role !== 'prefill' && role !== 'decode') throw new Error('--role must be prefill or decode');
const side = role === 'prefill' ? transfer.prefill : transfer.decode;
const layout = layoutFor(side.tpSize);

// ---- ranks ---------------------------------------------------------------------------------------
const groups = []; // groups[dp] = { ranks: [tp...], pool }
for (let dp = 0; dp < side.dpSize; dp++) {
  const ranks = await Promise.all(
    Array.from({ length: side.tpSize }, (_, tp) => {
      const options = kvOptionsFromConfig(transfer, mooncake, {
        dpRank: dp,
        tpRank: tp,
        layout,
        totalKvHeads: MODEL.totalKvHeads,
        overrides: { engineOptions: { bindAddress: '127.0.0.1' }, abortTimeoutMs: 60_000 },
      });
      return role === 'prefill' ? KvProducer.create(options) : KvConsumer.create(options);
    }),
  );
  groups.push({ ranks, pool: new BlockPool(MODEL.numBlocks) });
}
// Connect to the other instance's ranks before the first request (a decode learns engine ids from
// kv_transfer_params; the demo names the prefill's up front).
if (args['warm-up'] !== undefined) {
  for (const g of groups) for (const r of g.ranks) await r.warmUp(args['warm-up']);
}
const headStart = (tp) => heldHeads('mha', MODEL.totalKvHeads, side.tpSize, tp).start;
let nextDp = 0;
const pickGroup = () => groups[nextDp++ % groups.length];

// ---- stats ----------------------------------------------------------------------------------------
const stats = { requests: 0, kvBytes: 0, transfers: 0, ranges: 0, verifiedRequests: 0, mismatches: 0, failedBlocks: 0, recomputedBlocks: 0, released: {} };
const intervals = []; // [start, end] of each request's KV transfer, this process's clock
function busyMs() {
  const sorted = [...intervals].sort((a, b) => a[0] - b[0]);
  let total = 0;
  let cur;
  for (const [s, e] of sorted) {
    if (!cur || s > cur[1]) {
      if (cur) total += cur[1] - cur[0];
      cur = [s, e];
    } else cur[1] = Math.max(cur[1], e);
  }
  if (cur) total += cur[1] - cur[0];
  return total;
}
function durations() {
  const d = intervals.map(([s, e]) => e - s).sort((a, b) => a - b);
  const at = (q) => (d.length ? d[Math.min(d.length - 1, Math.floor(q * d.length))] : 0);
  return { p50: at(0.5), p99: at(0.99), max: d.at(-1) ?? 0 };
}

// ---- KV work --------------------------------------------------------------------------------------
function computeKv(group, requestId, blocks) {
  for (const r of group.ranks) fillKvPattern(r.caches, { seed: patternSeed(requestId), blockIds: blocks, headStart: headStart(r.tpRank) });
}

/** Verifies what arrived; blocks that failed are "recomputed" locally (vLLM's invalid-block path). */
function verify(group, requestId, blocks, outcomes, firstPosition) {
  let mismatches = 0;
  let failed = 0;
  const seed = patternSeed(requestId);
  for (let i = 0; i < group.ranks.length; i++) {
    const r = group.ranks[i];
    const bad = new Set(outcomes[i].failedBlockIds);
    const spec = (blockIds, position) => ({ seed, blockIds, firstPosition: position, headStart: headStart(r.tpRank) });
    if (bad.size === 0) {
      mismatches += checkKvPattern(r.caches, spec(blocks, firstPosition)).mismatches;
      continue;
    }
    failed += bad.size;
    blocks.forEach((b, k) => {
      if (bad.has(b)) fillKvPattern(r.caches, spec([b], firstPosition + k));
      else mismatches += checkKvPattern(r.caches, spec([b], firstPosition + k)).mismatches;
    });
  }
  stats.mismatches += mismatches;
  stats.failedBlocks += failed;
  stats.recomputedBlocks += failed;
  if (mismatches === 0) stats.verifiedRequests++;
  return { mismatches, failedBlocks: failed };
}

function record(outcomes, start) {
  intervals.push([start, performance.now()]);
  for (const o of outcomes) {
    stats.kvBytes += o.bytes;
    stats.transfers += o.peers.length;
    stats.ranges += o.ranges;
  }
}

async function prefillPull(body) {
  const group = pickGroup();
  const tokens = promptTokens(body);
  const blocks = await group.pool.allocate(Math.ceil(tokens / MODEL.blockSize));
  const requestId = randomUUID();
  computeKv(group, requestId, blocks);
  const holds = group.ranks.map((r) => r.hold(requestId, blocks));
  void Promise.all(holds.map((h) => h.released)).then((rs) => {
    for (const r of rs) stats.released[r.reason] = (stats.released[r.reason] ?? 0) + 1;
    group.pool.release(blocks);
  });
  return { tokens, extra: { kv_transfer_params: holds[0].params } };
}

async function prefillPush(body) {
  const group = pickGroup();
  const tokens = promptTokens(body);
  const params = body.kv_transfer_params;
  const blocks = await group.pool.allocate(Math.ceil(tokens / MODEL.blockSize));
  try {
    const requestId = params.remote_request_id;
    computeKv(group, requestId, blocks);
    const start = performance.now();
    const outcomes = await Promise.all(group.ranks.map((r) => r.push(params, blocks)));
    record(outcomes, start);
    return { tokens, extra: { kv: { ok: outcomes.every((o) => o.ok), bytes: outcomes.reduce((a, o) => a + o.bytes, 0) } } };
  } finally {
    group.pool.release(blocks);
  }
}

async function decodePull(body) {
  const group = pickGroup();
  const params = body.kv_transfer_params;
  const blocks = await group.pool.allocate(params.remote_block_ids.length);
  try {
    const start = performance.now();
    const outcomes = await Promise.all(group.ranks.map((r) => r.pull(params, blocks)));
    record(outcomes, start);
    const v = verify(group, params.remote_request_id, blocks, outcomes, 0);
    return { tokens: promptTokens(body), extra: { kv: { mode: 'pull', bytes: outcomes.reduce((a, o) => a + o.bytes, 0), ms: performance.now() - start, ...v } } };
  } finally {
    group.pool.release(blocks);
  }
}

async function decodePush(body, prefillUrl) {
  const group = pickGroup();
  const tokens = promptTokens(body);
  const blocks = await group.pool.allocate(Math.ceil(tokens / MODEL.blockSize));
  try {
    const requestId = randomUUID();
    const start = performance.now();
    const xs = group.ranks.map((r) => r.expect(requestId, blocks, { timeoutMs: 60_000 }));
    // The layerwise proxy's metaserver step, done here: hand this instance's params to the prefill.
    const res = await fetch(new URL('/v1/completions', prefillUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, max_tokens: 1, stream: false, kv_transfer_params: xs[0].params }),
    });
    await res.arrayBuffer();
    if (!res.ok) for (const x of xs) x.cancel();
    const outcomes = await Promise.all(xs.map((x) => x.done));
    record(outcomes, start);
    const v = verify(group, requestId, blocks, outcomes, 0);
    return { tokens, extra: { kv: { mode: 'push', bytes: outcomes.reduce((a, o) => a + o.bytes, 0), ms: performance.now() - start, ...v } } };
  } finally {
    group.pool.release(blocks);
  }
}

// ---- HTTP -----------------------------------------------------------------------------------------
function completion(body, tokens, generated, extra) {
  const text = Array.from({ length: generated }, (_, i) => ` tok${i}`).join('');
  return {
    id: `cmpl-${randomUUID()}`,
    object: 'text_completion',
    created: Math.floor(Date.now() / 1000),
    model: body.model ?? MODEL.name,
    choices: [{ index: 0, text, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: tokens, completion_tokens: generated, total_tokens: tokens + generated },
    ...extra,
  };
}

async function handle(req, res) {
  if (req.method === 'GET' && (req.url === '/health' || req.url === '/healthcheck')) return send(res, 200, 'OK');
  if (req.method === 'GET' && req.url === '/v1/models') return send(res, 200, { object: 'list', data: [{ id: MODEL.name, object: 'model' }] });
  if (req.method === 'GET' && req.url === '/kv/stats') {
    return send(res, 200, { role, ...stats, busyMs: busyMs(), latencyMs: durations(), ranks: groups.flatMap((g) => g.ranks.map((r) => ({ dp: r.dpRank, tp: r.tpRank, metrics: r.metrics() }))) });
  }
  if (req.method !== 'POST' || !['/v1/completions', '/v1/chat/completions'].includes(req.url)) return send(res, 404, { error: { message: 'not found' } });
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  stats.requests++;
  const params = body.kv_transfer_params;
  let r;
  if (role === 'prefill') {
    r = params && Array.isArray(params.remote_block_ids) ? await prefillPush(body) : await prefillPull(body);
    return send(res, 200, completion(body, r.tokens, 1, r.extra));
  }
  if (wantsRemotePrefill(params)) r = await decodePull(body);
  else if (args['prefill-url']) r = await decodePush(body, args['prefill-url']);
  else r = { tokens: promptTokens(body), extra: {} };
  const generated = Math.max(1, Number(body.max_tokens) || 16);
  if (!body.stream) return send(res, 200, completion(body, r.tokens, generated, r.extra));
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  for (let i = 0; i < generated; i++) res.write(`data: ${JSON.stringify({ choices: [{ index: 0, text: ` tok${i}` }], ...(i === 0 ? r.extra : {}) })}\n\n`);
  res.end('data: [DONE]\n\n');
}

function send(res, status, body) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': typeof body === 'string' ? 'text/plain' : 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) send(res, 500, { error: { message: err.message, code: err.code } });
    else res.destroy(err);
  });
});
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ ready: true, role, port: server.address().port, keys: groups.flatMap((g) => g.ranks.map((r) => r.registryKey)) }) + '\n');
});

let closing;
function shutdown() {
  closing ??= (async () => {
    server.close();
    server.closeAllConnections();
    await Promise.all(groups.flatMap((g) => g.ranks.map((r) => r.close())));
    process.exit(0);
  })();
}
process.on('SIGTERM', shutdown);
process.stdin.on('end', shutdown);
process.stdin.resume();
