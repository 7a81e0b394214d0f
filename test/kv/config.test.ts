// The Ascend PD guide's --kv-transfer-config and mooncake.json: accepted as written, every invalid value rejected
// with INVALID_CONFIG naming the field; and the options they turn into.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib';
import {
  kvOptionsFromConfig,
  loadMooncakeConfig,
  metadataConnectionString,
  parseKvTransferConfig,
  parseKvTransferParams,
  parseMooncakeConfig,
  resolveKvOptions,
  alignBlocks,
  type KvRankOptions,
} from '../../lib/kv';

// Verbatim from the Ascend PD guide's run_prefill.sh / run_decode.sh.
const SEED_PREFILL = `{"kv_connector": "MooncakeConnectorV1",
  "kv_buffer_device": "npu",
  "kv_role": "kv_producer",
  "kv_parallel_size": 1,
  "kv_port": "20001",
  "engine_id": "0",
  "kv_rank": 0,
  "kv_connector_module_path": "vllm_ascend.distributed.mooncake_connector",
  "kv_connector_extra_config": {
            "prefill": {
                    "dp_size": 2,
                    "tp_size": 2
             },
             "decode": {
                    "dp_size": 2,
                    "tp_size": 2
             }
      }
  }`;
const SEED_DECODE = SEED_PREFILL.replace('kv_producer', 'kv_consumer').replace('"20001"', '"20002"').replace('"engine_id": "0"', '"engine_id": "1"').replace('"kv_rank": 0', '"kv_rank": 1');
const SEED_MOONCAKE = `{
  "prefill_url": "localhost:15272",
  "decode_url": "localhost:14012",\t
  "metadata_backend": "http",
  "protocol": "ascend"
}`;

function err(fn: () => unknown): MooncakeError {
  try {
    fn();
  } catch (e) {
    return e as MooncakeError;
  }
  throw new Error('expected an error');
}

const seedObject = () => JSON.parse(SEED_PREFILL) as Record<string, unknown>;

describe('--kv-transfer-config', () => {
  it("parses the guide's prefill and decode configs", () => {
    const p = parseKvTransferConfig(SEED_PREFILL);
    expect(p).toMatchObject({
      connector: 'MooncakeConnectorV1',
      mode: 'pull',
      role: 'kv_producer',
      kvPort: 20001,
      engineId: '0',
      kvRank: 0,
      kvParallelSize: 1,
      bufferDevice: 'npu',
      connectorModulePath: 'vllm_ascend.distributed.mooncake_connector',
      prefill: { dpSize: 2, tpSize: 2 },
      decode: { dpSize: 2, tpSize: 2 },
      warnings: [],
    });
    const d = parseKvTransferConfig(SEED_DECODE);
    expect(d).toMatchObject({ role: 'kv_consumer', kvPort: 20002, engineId: '1', kvRank: 1 });
    expect(parseKvTransferConfig(JSON.parse(SEED_PREFILL) as object).kvPort).toBe(20001);
  });

  it('accepts numbers for kv_port and engine_id, the layerwise (push) connector, and reports unknown keys', () => {
    const c = parseKvTransferConfig({ ...seedObject(), kv_port: 30000, engine_id: 7, kv_connector: 'MooncakeLayerwiseConnector', kv_rol: 'x' });
    expect(c.kvPort).toBe(30000);
    expect(c.engineId).toBe('7');
    expect(c.mode).toBe('push');
    expect(c.warnings).toEqual(["unknown key 'kv_rol' ignored"]);
  });

  const invalid: [string, (o: Record<string, unknown>) => void][] = [
    ['kv_connector', (o) => (o.kv_connector = 'NixlConnector')],
    ['kv_connector', (o) => delete o.kv_connector],
    ['kv_role', (o) => (o.kv_role = 'producer')],
    ['kv_role', (o) => delete o.kv_role],
    ['kv_port', (o) => (o.kv_port = 'abc')],
    ['kv_port', (o) => (o.kv_port = 0)],
    ['kv_port', (o) => (o.kv_port = 70000)],
    ['kv_port', (o) => (o.kv_port = 65534)], // + dp×tp − 1 overflows
    ['kv_port', (o) => (o.kv_port = 1.5)],
    ['engine_id', (o) => (o.engine_id = '')],
    ['engine_id', (o) => (o.engine_id = 'a/b')],
    ['engine_id', (o) => (o.engine_id = 'a b')],
    ['engine_id', (o) => (o.engine_id = null)],
    ['engine_id', (o) => (o.engine_id = -1)],
    ['kv_rank', (o) => (o.kv_rank = -1)],
    ['kv_rank', (o) => (o.kv_rank = '0')],
    ['kv_parallel_size', (o) => (o.kv_parallel_size = 0)],
    ['kv_buffer_device', (o) => (o.kv_buffer_device = 'NPU 0')],
    ['kv_buffer_device', (o) => (o.kv_buffer_device = 3)],
    ['kv_buffer_size', (o) => (o.kv_buffer_size = -1)],
    ['kv_ip', (o) => (o.kv_ip = 1)],
    ['kv_connector_module_path', (o) => (o.kv_connector_module_path = 1)],
    ['kv_connector_extra_config', (o) => delete o.kv_connector_extra_config],
    ['kv_connector_extra_config', (o) => (o.kv_connector_extra_config = [])],
    ['kv_connector_extra_config.prefill', (o) => delete (o.kv_connector_extra_config as Record<string, unknown>).prefill],
    ['kv_connector_extra_config.decode', (o) => ((o.kv_connector_extra_config as Record<string, unknown>).decode = 2)],
    ['kv_connector_extra_config.prefill.dp_size', (o) => ((o.kv_connector_extra_config as { prefill: Record<string, unknown> }).prefill.dp_size = 0)],
    ['kv_connector_extra_config.prefill.tp_size', (o) => delete (o.kv_connector_extra_config as { prefill: Record<string, unknown> }).prefill.tp_size],
    ['kv_connector_extra_config.decode.tp_size', (o) => ((o.kv_connector_extra_config as { decode: Record<string, unknown> }).decode.tp_size = '2')],
    ['kv_connector_extra_config.decode.dp_size', (o) => ((o.kv_connector_extra_config as { decode: Record<string, unknown> }).decode.dp_size = 1.5)],
    ['kv_connector_extra_config.prefill.pp_size', (o) => ((o.kv_connector_extra_config as { prefill: Record<string, unknown> }).prefill.pp_size = 2)],
    ['kv_connector_extra_config.prefill.tp_size', (o) => ((o.kv_connector_extra_config as { decode: Record<string, unknown> }).decode.tp_size = 4)],
    ['kv_connector_extra_config.prefill.tp_size', (o) => ((o.kv_connector_extra_config as { prefill: Record<string, unknown> }).prefill.tp_size = 3)],
  ];
  for (const [field, mutate] of invalid) {
    it(`rejects an invalid ${field} (${mutate.toString().replace(/^\(o\) => /, '').slice(0, 70)})`, () => {
      const o = seedObject();
      mutate(o);
      const e = err(() => parseKvTransferConfig(o));
      expect(e.code).toBe('INVALID_CONFIG');
      expect(e.message).toContain(field);
      expect(e.details?.field).toBe(field);
    });
  }

  it('rejects text that is not a JSON object', () => {
    expect(err(() => parseKvTransferConfig('{"kv_role": ')).code).toBe('INVALID_CONFIG');
    expect(err(() => parseKvTransferConfig('[1]')).message).toContain('JSON object');
  });

  // Found by fuzz/js (kv_config): an invalid value that JSON.stringify cannot show (a bigint, as the
  // handshake JSON reader makes of large integers, or a cycle) escaped as a TypeError instead of
  // INVALID_CONFIG.
  it('reports values it cannot serialize as INVALID_CONFIG', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const bad of [9007199254740993n, [{ a: [1n] }], cyclic]) {
      const e = err(() => parseMooncakeConfig({ protocol: bad }));
      expect(e.code).toBe('INVALID_CONFIG');
      expect(e.details?.field).toBe('protocol');
      expect(err(() => parseKvTransferConfig({ ...JSON.parse(SEED_PREFILL), kv_role: bad })).code).toBe('INVALID_CONFIG');
    }
    expect(err(() => parseMooncakeConfig({ protocol: 12345678901234567890n })).message).toContain('12345678901234567890');
  });

  // Found by fuzz/js (kv_config): the connector check used `in`, so Object.prototype's names
  // ("constructor", "toString", "__proto__", ...) were accepted as connectors, with a function or an
  // object as their transfer mode.
  it('accepts only the listed connectors, not inherited property names', () => {
    for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
      const e = err(() => parseKvTransferConfig({ ...JSON.parse(SEED_PREFILL), kv_connector: name }));
      expect(e.code).toBe('INVALID_CONFIG');
      expect(e.details?.field).toBe('kv_connector');
    }
  });
});

describe('mooncake.json', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it("parses the guide's file (tab and all)", () => {
    const c = parseMooncakeConfig(SEED_MOONCAKE);
    expect(c).toMatchObject({
      prefillUrl: { host: 'localhost', port: 15272 },
      decodeUrl: { host: 'localhost', port: 14012 },
      metadataBackend: 'http',
      protocol: 'ascend',
      metadataServer: undefined,
    });
  });

  const invalid: [string, Record<string, unknown>][] = [
    ['prefill_url', { prefill_url: 'localhost' }],
    ['prefill_url', { prefill_url: 'localhost:0' }],
    ['decode_url', { decode_url: 'localhost:99999' }],
    ['decode_url', { decode_url: 14012 }],
    ['metadata_backend', { metadata_backend: 'zookeeper' }],
    ['metadata_backend', { metadata_backend: 1 }],
    ['protocol', { protocol: 'hccl' }],
    ['protocol', { protocol: '' }],
    ['metadata_server', { metadata_server: '' }],
    ['metadata_server', { metadata_server: 'ftp://x/metadata' }],
    ['metadata_server', { metadata_server: 'etcd://h:2379' }], // backend says http
    ['device_name', { device_name: 0 }],
  ];
  for (const [field, patch] of invalid) {
    it(`rejects an invalid ${field} (${JSON.stringify(patch)})`, () => {
      const e = err(() => parseMooncakeConfig({ ...(JSON.parse(SEED_MOONCAKE) as object), ...patch }));
      expect(e.code).toBe('INVALID_CONFIG');
      expect(e.message).toContain(field);
      expect(e.details?.field).toBe(field);
    });
  }

  it('resolves the metadata connection string', () => {
    const seed = parseMooncakeConfig(SEED_MOONCAKE);
    const e = err(() => metadataConnectionString(seed));
    expect(e.code).toBe('INVALID_CONFIG');
    expect(e.message).toContain('metadata_server');
    expect(metadataConnectionString(parseMooncakeConfig({ metadata_backend: 'http', metadata_server: '10.0.0.1:8080' }))).toBe('http://10.0.0.1:8080/metadata');
    expect(metadataConnectionString(parseMooncakeConfig({ metadata_server: 'http://h:1/metadata' }))).toBe('http://h:1/metadata');
    expect(metadataConnectionString(parseMooncakeConfig({ metadata_backend: 'etcd', metadata_server: 'h:2379' }))).toBe('etcd://h:2379');
    expect(metadataConnectionString(parseMooncakeConfig({ metadata_backend: 'redis', metadata_server: 'h:6379' }))).toBe('redis://h:6379');
    expect(metadataConnectionString(parseMooncakeConfig({ metadata_backend: 'p2phandshake' }))).toBe('P2PHANDSHAKE');
  });

  it('loads the file MOONCAKE_CONFIG_PATH names, with clear errors', () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kv-config-'));
    const file = path.join(dir, 'mooncake.json');
    fs.writeFileSync(file, SEED_MOONCAKE);
    expect(loadMooncakeConfig(file).protocol).toBe('ascend');
    expect(err(() => loadMooncakeConfig('')).message).toContain('MOONCAKE_CONFIG_PATH');
    const missing = err(() => loadMooncakeConfig(path.join(dir!, 'nope.json')));
    expect(missing.code).toBe('INVALID_CONFIG');
    expect(missing.details?.field).toBe('MOONCAKE_CONFIG_PATH');
    fs.writeFileSync(file, '{');
    expect(err(() => loadMooncakeConfig(file)).code).toBe('INVALID_CONFIG');
  });
});

describe('options from the configs', () => {
  const layout = { numLayers: 2, numBlocks: 8, blockSize: 4, headBytes: 8, numHeads: 2 };
  const mc = parseMooncakeConfig({ prefill_url: '127.0.0.1:15272', decode_url: '127.0.0.2:14012', metadata_backend: 'http', metadata_server: '127.0.0.1:8080', protocol: 'tcp' });

  it('builds producer and consumer options', () => {
    const p = kvOptionsFromConfig(parseKvTransferConfig(SEED_PREFILL), mc, { dpRank: 1, tpRank: 1, layout });
    expect(p).toMatchObject({ engineId: '0', role: 'kv_producer', dpRank: 1, tpRank: 1, kvPort: 20001, host: '127.0.0.1', metadataServer: 'http://127.0.0.1:8080/metadata' });
    const r = resolveKvOptions(p, 'kv_producer');
    expect(r.totalKvHeads).toBe(4);
    expect(r.mapping).toEqual({ attention: 'mha', totalHeads: 4, prefillTp: 2, decodeTp: 2 });
    const d = kvOptionsFromConfig(parseKvTransferConfig(SEED_DECODE), mc, { dpRank: 0, tpRank: 1, layout });
    expect(d).toMatchObject({ engineId: '1', role: 'kv_consumer', host: '127.0.0.2', kvPort: 20002 });
  });

  it("refuses the guide's ascend protocol unless tcp is forced, and ranks outside the sizes", () => {
    const seed = parseMooncakeConfig({ ...(JSON.parse(SEED_MOONCAKE) as object), metadata_server: 'http://127.0.0.1:8080/metadata' });
    const t = parseKvTransferConfig(SEED_PREFILL);
    const e = err(() => kvOptionsFromConfig(t, seed, { dpRank: 0, tpRank: 0, layout, forceTcp: false }));
    expect(e.code).toBe('NOT_SUPPORTED_TRANSPORT');
    expect(e.details?.field).toBe('protocol');
    expect(kvOptionsFromConfig(t, seed, { dpRank: 0, tpRank: 0, layout, forceTcp: true }).metadataServer).toBe('http://127.0.0.1:8080/metadata');
    expect(err(() => kvOptionsFromConfig(t, mc, { dpRank: 2, tpRank: 0, layout })).details?.field).toBe('dpRank');
    expect(err(() => kvOptionsFromConfig(t, mc, { dpRank: 0, tpRank: 2, layout })).details?.field).toBe('tpRank');
    const p2p = parseMooncakeConfig({ metadata_backend: 'p2phandshake', protocol: 'tcp' });
    expect(err(() => kvOptionsFromConfig(t, p2p, { dpRank: 0, tpRank: 0, layout })).details?.field).toBe('metadata_backend');
  });

  it("side_channel 'vllm': no metadata server, the bootstrap server address and port, decode TP above prefill TP", () => {
    const cfg = {
      kv_connector: 'MooncakeConnector', kv_role: 'kv_producer', engine_id: 'p0',
      kv_connector_extra_config: { prefill: { dp_size: 1, tp_size: 1 }, decode: { dp_size: 1, tp_size: 2 }, side_channel: 'vllm', bootstrap_server_address: '10.0.0.2:9000' },
    };
    const t = parseKvTransferConfig(cfg);
    expect(t).toMatchObject({ sideChannel: 'vllm', bootstrapServerAddress: '10.0.0.2:9000', kvPort: undefined });
    const combined = { ...layout, headLayout: 'HND' as const, combinedKv: true };
    const o = kvOptionsFromConfig(t, undefined, { dpRank: 0, tpRank: 0, layout: combined, bootstrapPort: 9001 });
    expect(o).toMatchObject({ sideChannel: 'vllm', vllm: { bootstrapAddress: '10.0.0.2:9000', bootstrapPort: 9001 } });
    expect(o.metadataServer).toBeUndefined();
    expect(resolveKvOptions(o, 'kv_producer').mapping).toMatchObject({ prefillTp: 1, decodeTp: 2, selection: 'vllm' });
    // Decode TP above prefill TP is vLLM's only; the other side channels still refuse it.
    const ascend = { ...cfg, kv_port: 30000, kv_connector_extra_config: { ...cfg.kv_connector_extra_config, side_channel: 'vllm-ascend' } };
    expect(err(() => parseKvTransferConfig(ascend)).details?.field).toBe('kv_connector_extra_config.prefill.tp_size');
    expect(err(() => parseKvTransferConfig({ ...cfg, kv_connector_extra_config: { ...cfg.kv_connector_extra_config, bootstrap_server_address: 'no-port' } })).details?.field).toBe('kv_connector_extra_config.bootstrap_server_address');
    const env = process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT;
    process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT = '9100';
    try {
      expect(kvOptionsFromConfig(t, undefined, { dpRank: 0, tpRank: 0, layout: combined }).vllm?.bootstrapPort).toBe(9100);
      process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT = 'x';
      expect(err(() => kvOptionsFromConfig(t, undefined, { dpRank: 0, tpRank: 0, layout: combined })).details?.field).toBe('VLLM_MOONCAKE_BOOTSTRAP_PORT');
    } finally {
      if (env === undefined) delete process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT;
      else process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT = env;
    }
  });

  it('labels caches given by address with kv_buffer_device; host Buffers stay cpu', () => {
    const t = parseKvTransferConfig(SEED_PREFILL); // kv_buffer_device "npu"
    const byAddress = kvOptionsFromConfig(t, mc, { dpRank: 1, tpRank: 1, layout, caches: { regions: [{ address: 0x200000n, length: 1 << 21 }] } });
    expect(byAddress.caches?.location).toBe('npu:3'); // dp_rank × tp_size + tp_rank
    const host = kvOptionsFromConfig(t, mc, { dpRank: 0, tpRank: 0, layout, caches: { regions: [Buffer.alloc(64)] } });
    expect(host.caches?.location).toBeUndefined();
    const explicit = kvOptionsFromConfig(t, mc, { dpRank: 0, tpRank: 0, layout, caches: { regions: [{ address: 0x200000n, length: 64 }], location: 'npu:7' } });
    expect(explicit.caches?.location).toBe('npu:7');
  });

  it('validates the options object field by field', () => {
    const good: KvRankOptions = { engineId: 'e', prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 }, layout, metadataServer: 'http://127.0.0.1:1/metadata' };
    expect(resolveKvOptions(good, 'kv_producer').abortTimeoutMs).toBe(480_000);
    const cases: [Partial<KvRankOptions> & Record<string, unknown>, string, 'kv_producer' | 'kv_consumer'][] = [
      [{ engineId: '' }, 'engineId', 'kv_producer'],
      [{ role: 'kv_consumer' }, 'role', 'kv_producer'],
      [{ tpRank: 2 }, 'tpRank', 'kv_producer'],
      [{ dpRank: -1 }, 'dpRank', 'kv_producer'],
      [{ prefill: { dpSize: 0, tpSize: 1 } }, 'prefill.dpSize', 'kv_producer'],
      [{ decode: undefined }, 'decode', 'kv_producer'],
      [{ layout: { ...layout, numHeads: 3 }, totalKvHeads: 4 }, 'layout.numHeads', 'kv_consumer'],
      [{ totalKvHeads: 0 }, 'totalKvHeads', 'kv_producer'],
      [{ metadataServer: undefined }, 'metadataServer', 'kv_producer'],
      [{ kvPort: 65535 }, 'kvPort', 'kv_producer'],
      [{ heartbeatMs: 0 }, 'heartbeatMs', 'kv_producer'],
      [{ staleAfterMs: 5 }, 'staleAfterMs', 'kv_producer'],
      [{ abortTimeoutMs: 0 }, 'abortTimeoutMs', 'kv_producer'],
      [{ transferTimeoutMs: -5 }, 'transferTimeoutMs', 'kv_consumer'],
      [{ host: '' }, 'host', 'kv_consumer'],
    ];
    for (const [patch, field, role] of cases) {
      const e = err(() => resolveKvOptions({ ...good, ...patch } as KvRankOptions, role));
      expect(e.code, field).toBe('INVALID_CONFIG');
      expect(e.details?.field, JSON.stringify(patch)).toBe(field);
    }
    // decode tp 2 over 4 heads → 2 heads per decode rank; prefill tp 1 → 4.
    expect(err(() => resolveKvOptions({ ...good, prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 2 } }, 'kv_consumer')).details?.field).toBe('tp_size');
  });
});

describe('kv_transfer_params', () => {
  const params = {
    do_remote_prefill: true,
    do_remote_decode: false,
    remote_engine_id: '0',
    remote_host: '10.0.0.1',
    remote_port: 20001,
    remote_block_ids: [1, 2, 3],
    remote_request_id: 'cmpl-1',
  };
  it('accepts what vllm-ascend sends (and request_id, string ports, numeric engine ids)', () => {
    expect(parseKvTransferParams(params)).toMatchObject(params);
    const alt = parseKvTransferParams({ ...params, remote_request_id: undefined, request_id: 'r', remote_port: '20003', remote_engine_id: 3, extra: 1 });
    expect(alt).toMatchObject({ remote_request_id: 'r', remote_port: 20003, remote_engine_id: '3', extra: 1 });
  });
  it('rejects each invalid field with INVALID_ARGUMENT', () => {
    const cases: [string, Record<string, unknown>][] = [
      ['remote_engine_id', { remote_engine_id: '' }],
      ['remote_host', { remote_host: 1 }],
      ['remote_port', { remote_port: 70000 }],
      ['remote_block_ids', { remote_block_ids: [1, -2] }],
      ['remote_block_ids', { remote_block_ids: null }],
      ['remote_request_id', { remote_request_id: '' }],
      ['remote_dp_rank', { remote_dp_rank: -1 }],
      ['remote_tp_size', { remote_tp_size: 0 }],
    ];
    for (const [field, patch] of cases) {
      const e = err(() => parseKvTransferParams({ ...params, ...patch }));
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.details?.field).toBe(`kv_transfer_params.${field}`);
    }
    expect(err(() => parseKvTransferParams(null)).code).toBe('INVALID_ARGUMENT');
  });
  it('tail-aligns local blocks with remote ones (prefix-cache hits)', () => {
    expect(alignBlocks([7, 8], [1, 2, 3])).toEqual({ remote: [2, 3], offset: 1 });
    expect(err(() => alignBlocks([1, 2], [1])).code).toBe('INVALID_ARGUMENT');
  });
});

describe('error messages never throw on odd values', () => {
  it('bigints and cycles in layout, params and options values give their own coded errors', async () => {
    const { KvLayout, parseKvTransferParams } = await import('../../lib/kv');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => KvLayout.from({ numLayers: 10n as never, numBlocks: 1, blockSize: 1, headBytes: 2, numHeads: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => KvLayout.from({ numLayers: cyclic as never, numBlocks: 1, blockSize: 1, headBytes: 2, numHeads: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => parseKvTransferParams({ remote_block_ids: cyclic } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });
});
