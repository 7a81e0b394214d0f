#!/usr/bin/env node
// A prefill instance (TP 2) and a decode instance (TP 1) speaking vLLM's own MooncakeConnector protocol, with
// mooncake-node's proxy in front in 'push' mode, as vLLM's mooncake_connector_proxy.py runs it: the proxy
// sends both the same transfer_id at once; decode asks prefill (found through prefill's bootstrap server) for
// the KV, prefill writes it. Either instance can be a real vLLM node instead (docs/vllm.md); here both are
// mooncake-node, on loopback, each behind a few lines of HTTP standing for the serving stack.
//
//   npm install zeromq msgpackr        # the side channel's optional packages
//   node examples/vllm/pd.mjs [--bootstrap-port 8998]
import * as http from 'node:http';
import { parseArgs } from 'node:util';
import { KvConsumer, KvProducer, createProxy } from 'mooncake-node';

const { values } = parseArgs({ options: { 'bootstrap-port': { type: 'string', default: '8998' } } });
const bootstrapPort = Number(values['bootstrap-port']);

// 4 KV heads of 64 bf16 values: vLLM's page holds a head's K then V per token (LBHNC), so headBytes = 2 × 128.
const heads = 4;
const layout = (tp) => ({ numLayers: 2, numBlocks: 64, blockSize: 16, headBytes: 256, numHeads: heads / tp, headLayout: 'HND', combinedKv: true });
const common = { sideChannel: 'vllm', host: '127.0.0.1', prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 }, totalKvHeads: heads, vllm: { bootstrapPort } };

// Prefill rank 0 serves the bootstrap server; both ranks register their side channel there.
const prefill = [];
for (const tpRank of [0, 1]) prefill.push(await KvProducer.create({ ...common, engineId: 'prefill-0', tpRank, layout: layout(2) }));
const decode = await KvConsumer.create({ ...common, engineId: 'decode-0', layout: layout(1) });

/** An OpenAI-style endpoint whose completion runs `kv(params)`: the serving stack's part of a request. */
async function serve(kv) {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', async () => {
      const request = JSON.parse(body);
      const result = await kv(request.kv_transfer_params);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'text_completion', choices: [{ index: 0, text: ' ok', finish_reason: 'length' }], kv: result }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}

const pBlocks = [3, 4, 5];
const dBlocks = [10, 11, 12];
// Prefill: "computes" the prompt into blocks 3-5, then writes them when the decode asks (push waits for it).
const p = await serve(async (params) => {
  for (const [r, rank] of prefill.entries()) for (let l = 0; l < 2; l++) for (const b of pBlocks) rank.caches.blockView(l, 'kv', b).fill(16 * r + 4 * l + b);
  const outcomes = await Promise.all(prefill.map((rank) => rank.push(params, pBlocks)));
  return outcomes.map((o) => ({ ok: o.ok, bytes: o.bytes }));
});
// Decode: blocks 10-12 were allocated for the prompt; ask the prefill ranks to fill them.
const d = await serve(async (params) => {
  const o = await decode.pull(params, dBlocks);
  return { ok: o.ok, failures: o.failures.map((f) => `${f.stage} ${f.code}`) };
});
const proxy = createProxy({ mode: 'push', prefill: [p.url], decode: [d.url], bootstrapPorts: { [p.url]: bootstrapPort } });
try {
  const { url } = await proxy.listen();
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', prompt: 'Hello', max_tokens: 8 }) });
  const answer = await res.json();
  console.log(`proxy answered ${res.status}; decode: ${JSON.stringify(answer.kv)}`);
  // Each prefill rank's two heads sit at their offset in the decode's page, in every layer and block.
  const half = 16 * 2 * 256;
  let same = true;
  for (const [r, rank] of prefill.entries()) {
    for (let l = 0; l < 2; l++) pBlocks.forEach((b, j) => (same &&= decode.caches.blockView(l, 'kv', dBlocks[j]).subarray(r * half, (r + 1) * half).equals(rank.caches.blockView(l, 'kv', b))));
  }
  console.log(`decode pages ${same ? 'hold every prefill rank\'s heads' : 'DIFFER'}`);
  process.exitCode = res.status === 200 && answer.kv.ok && same ? 0 : 1;
} finally {
  await proxy.close();
  for (const s of [p, d]) s.server.close();
  await decode.close();
  for (const rank of prefill) await rank.close();
}
