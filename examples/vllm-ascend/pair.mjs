#!/usr/bin/env node
// A prefill rank and a decode rank speaking vllm-ascend's MooncakeConnector side channel (ZMQ + msgpack on
// kv_port + rank), configured from --kv-transfer-config JSON as vLLM would pass it. Either side can be a
// real vllm-ascend node instead (docs/vllm-ascend.md); here both are mooncake-node, on loopback.
//
//   npm install zeromq msgpackr        # the side channel's optional packages
//   node examples/vllm-ascend/pair.mjs [--profile 0.23|0.18] [--kv-port 30100]
import { parseArgs } from 'node:util';
import { KvConsumer, KvProducer, kvOptionsFromConfig, parseKvTransferConfig } from 'mooncake-node';

const { values } = parseArgs({ options: { profile: { type: 'string', default: '0.23' }, 'kv-port': { type: 'string', default: '30100' } } });
const kvPort = Number(values['kv-port']);

// The --kv-transfer-config of each node; side_channel makes mooncake-node speak vllm-ascend's protocol.
const config = (role, engineId, port) => ({
  kv_connector: 'MooncakeConnectorV1',
  kv_role: role,
  kv_port: String(port),
  engine_id: engineId,
  kv_connector_extra_config: {
    prefill: { dp_size: 1, tp_size: 1 },
    decode: { dp_size: 1, tp_size: 1 },
    side_channel: 'vllm-ascend',
    vllm_ascend_profile: values.profile,
  },
});
// What only the worker knows: its ranks and its KV-cache layout (2 layers, K and V, 8 heads of 128 bf16).
const worker = { dpRank: 0, tpRank: 0, layout: { numLayers: 2, numBlocks: 64, blockSize: 16, headBytes: 256, numHeads: 8 } };
const local = { host: '127.0.0.1' };

const prefill = await KvProducer.create({ ...kvOptionsFromConfig(parseKvTransferConfig(config('kv_producer', 'prefill-0', kvPort)), undefined, worker), ...local });
const decode = await KvConsumer.create({ ...kvOptionsFromConfig(parseKvTransferConfig(config('kv_consumer', 'decode-0', kvPort + 1)), undefined, worker), ...local });
try {
  console.log(`prefill side channel on ${prefill.registryKey} (ZMQ ROUTER), its engine on ${prefill.engine.rpcPort} (announced as te_rpc_port)`);
  // Prefill computed a 40-token prompt into blocks 3, 4, 5: keep them and hand the params to the proxy.
  for (let l = 0; l < 2; l++) for (const b of [3, 4, 5]) prefill.caches.blockView(l, 'k', b).fill(b + 10 * l);
  const hold = prefill.hold('cmpl-example-0', [3, 4, 5], { promptTokens: 40, lastTokenId: 42 });
  console.log('kv_transfer_params (as vllm-ascend request_finished returns them):');
  console.log(JSON.stringify(hold.params));
  // Decode allocated blocks 10, 11, 12 for the request and reads them; DONE goes back whatever happens.
  const outcome = await decode.pull(hold.params, [10, 11, 12]);
  const release = await hold.released;
  let same = true;
  for (let l = 0; l < 2; l++) for (const [p, d] of [[3, 10], [4, 11], [5, 12]]) same &&= decode.caches.blockView(l, 'k', d).equals(prefill.caches.blockView(l, 'k', p));
  console.log(`pull: ${outcome.ok ? 'ok' : 'FAILED'}, ${outcome.bytes} bytes, blocks ${same ? 'identical' : 'DIFFERENT'}; prefill released the blocks: ${release.reason}`);
  process.exitCode = outcome.ok && same && release.reason === 'done' ? 0 : 1;
} finally {
  await decode.close();
  await prefill.close();
}
