/**
 * The Ascend PD guide's configuration files, parsed with a clear INVALID_CONFIG error for every invalid value:
 *
 * - vLLM's `--kv-transfer-config` JSON (`kv_connector`, `kv_role`, `kv_port`, `engine_id`, `kv_rank`,
 *   `kv_parallel_size`, `kv_buffer_device`, `kv_connector_extra_config.prefill/.decode` with `dp_size`
 *   and `tp_size`, ...);
 * - `mooncake.json` (`prefill_url`, `decode_url`, `metadata_backend`, `protocol`, `metadata_server`, ...),
 *   found through `MOONCAKE_CONFIG_PATH`.
 *
 * `kvOptionsFromConfig` turns both, plus what only the worker knows (its dp/tp rank and KV layout), into
 * KvProducer/KvConsumer options.
 */
import * as fs from 'node:fs';
import { MooncakeError, describeValue } from '../errors';
import { MemoryRegion } from '../engine/memory';
import { parseMetadataConnectionString, P2P_HANDSHAKE } from '../metadata/store';
import type { KvLayout, KvLayoutSpec } from './layout';
import { checkEngineId, VLLM_ASCEND_PROFILES, type KvParallelSize, type KvRankOptions, type KvRole, type VllmAscendProfile } from './options';
import { KV_SIDE_CHANNELS, type KvSideChannelName } from './side-channel';
import { validateTpMapping } from './rank-map';
import type { KvCachesInput } from './caches';

/** Connector names accepted in `kv_connector`, and the transfer mode each implies. */
export const KV_CONNECTORS: Readonly<Record<string, 'pull' | 'push'>> = {
  MooncakeConnectorV1: 'pull',
  MooncakeConnector: 'pull',
  MooncakeLayerwiseConnector: 'push',
};

export const KV_ROLES: readonly KvRole[] = ['kv_producer', 'kv_consumer', 'kv_both'];

/** vLLM KVTransferConfig fields we know; others are reported in `warnings`. */
const KNOWN_TRANSFER_KEYS = new Set([
  'kv_connector',
  'kv_role',
  'kv_port',
  'engine_id',
  'kv_rank',
  'kv_parallel_size',
  'kv_buffer_device',
  'kv_buffer_size',
  'kv_ip',
  'kv_connector_module_path',
  'kv_connector_extra_config',
  'kv_load_failure_policy',
  'enable_permute_local_kv',
]);

export interface KvTransferConfig {
  connector: string;
  /** 'pull' for MooncakeConnector(V1), 'push' for MooncakeLayerwiseConnector. */
  mode: 'pull' | 'push';
  role: KvRole;
  /** Base of the ranks' handshake ports; undefined when not given (free ports). */
  kvPort: number | undefined;
  engineId: string;
  kvRank: number | undefined;
  kvParallelSize: number;
  /** 'cpu', 'npu', 'cuda', ... (default 'cpu'). */
  bufferDevice: string;
  connectorModulePath: string | undefined;
  prefill: KvParallelSize;
  decode: KvParallelSize;
  /**
   * The side channel (`kv_connector_extra_config.side_channel`): 'mooncake-node' (default, Node <-> Node),
   * 'vllm-ascend' (pair with real vllm-ascend nodes) or 'vllm' (pair with vLLM's own MooncakeConnector).
   * Chosen explicitly: both sides must agree.
   */
  sideChannel: KvSideChannelName;
  /** `kv_connector_extra_config.bootstrap_server_address` ('vllm': the bootstrap server prefill ranks register with). */
  bootstrapServerAddress: string | undefined;
  /** `kv_connector_extra_config.vllm_ascend_profile`: '0.23' (default) or '0.18'. */
  vllmAscendProfile: VllmAscendProfile;
  /** kv_connector_extra_config as given (other keys included). */
  extraConfig: Record<string, unknown>;
  /** Unknown keys and ignored values, for logging. */
  warnings: string[];
}

export type MetadataBackend = 'http' | 'etcd' | 'redis' | 'p2phandshake';
export const METADATA_BACKENDS: readonly MetadataBackend[] = ['http', 'etcd', 'redis', 'p2phandshake'];

/** Upstream transfer protocols (the built-in engine speaks tcp; see kvOptionsFromConfig). */
export const MOONCAKE_PROTOCOLS: readonly string[] = ['tcp', 'rdma', 'ascend', 'nvlink', 'nvmeof', 'cxl', 'efa', 'hip', 'barex', 'ubshmem'];

export interface HostPort {
  host: string;
  port: number;
}

export interface MooncakeConfig {
  prefillUrl: HostPort | undefined;
  decodeUrl: HostPort | undefined;
  metadataBackend: MetadataBackend | undefined;
  /** As given (may lack a scheme). */
  metadataServer: string | undefined;
  protocol: string;
  deviceName: string | undefined;
  localHostname: string | undefined;
  warnings: string[];
}

/** A value for an error message. Never throws: configs given as objects may hold bigints or cycles. */
function show(value: unknown): string {
  return value === undefined ? 'nothing' : describeValue(value);
}

function fail(field: string, value: unknown, what: string, source: string): MooncakeError {
  const shown = show(value);
  return new MooncakeError('INVALID_CONFIG', `${source}: ${field} must be ${what}, got ${shown}`, { details: { field, value, source } });
}

function asObject(input: unknown, source: string): Record<string, unknown> {
  let v = input;
  if (typeof input === 'string') {
    try {
      v = JSON.parse(input);
    } catch (err) {
      throw new MooncakeError('INVALID_CONFIG', `${source} is not valid JSON: ${(err as Error).message}`, { cause: err, details: { source } });
    }
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new MooncakeError('INVALID_CONFIG', `${source} must be a JSON object`, { details: { source } });
  return v as Record<string, unknown>;
}

/** o[key] as an integer; `label` names the field in errors. */
function intField(o: Record<string, unknown>, key: string, label: string, min: number, source: string, opts: { required?: boolean; strings?: boolean; max?: number } = {}): number | undefined {
  const raw = o[key];
  if (raw === undefined || raw === null) {
    if (opts.required) throw fail(label, raw, `an integer >= ${min}`, source);
    return undefined;
  }
  const v = opts.strings && typeof raw === 'string' && /^\s*\d+\s*$/.test(raw) ? Number(raw) : raw;
  const max = opts.max ?? Number.MAX_SAFE_INTEGER;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw fail(label, raw, max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`, source);
  }
  return v;
}

function parallelField(extra: Record<string, unknown>, side: 'prefill' | 'decode', source: string): KvParallelSize {
  const field = `kv_connector_extra_config.${side}`;
  const v = extra[side];
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw fail(field, v, 'an object { "dp_size": n, "tp_size": n }', source);
  const o = v as Record<string, unknown>;
  const dpSize = intField(o, 'dp_size', `${field}.dp_size`, 1, source, { required: true }) as number;
  const tpSize = intField(o, 'tp_size', `${field}.tp_size`, 1, source, { required: true }) as number;
  const pp = intField(o, 'pp_size', `${field}.pp_size`, 1, source);
  if (pp !== undefined && pp !== 1) throw fail(`${field}.pp_size`, pp, '1 (pipeline parallelism is not supported)', source);
  return { dpSize, tpSize };
}

/**
 * Parses vLLM's `--kv-transfer-config` (a JSON string or the parsed object). Every invalid value is an
 * INVALID_CONFIG error naming the field and the value.
 */
export function parseKvTransferConfig(input: string | object, source = 'kv-transfer-config'): KvTransferConfig {
  const o = asObject(input, source);
  const warnings: string[] = [];
  for (const k of Object.keys(o)) if (!KNOWN_TRANSFER_KEYS.has(k)) warnings.push(`unknown key '${k}' ignored`);
  const connector = o.kv_connector;
  if (typeof connector !== 'string' || !Object.hasOwn(KV_CONNECTORS, connector)) {
    throw fail('kv_connector', connector, `one of ${Object.keys(KV_CONNECTORS).join(', ')}`, source);
  }
  const role = o.kv_role;
  if (typeof role !== 'string' || !KV_ROLES.includes(role as KvRole)) throw fail('kv_role', role, KV_ROLES.join(', '), source);
  const kvPort = intField(o, 'kv_port', 'kv_port', 1, source, { strings: true, max: 65535 });
  let engineId = o.engine_id;
  if (typeof engineId === 'number' && Number.isSafeInteger(engineId) && engineId >= 0) engineId = String(engineId);
  try {
    checkEngineId('engine_id', engineId);
  } catch {
    throw fail('engine_id', o.engine_id, "a non-empty string (or integer) without '/' or spaces, at most 128 characters", source);
  }
  const kvRank = intField(o, 'kv_rank', 'kv_rank', 0, source);
  const kvParallelSize = intField(o, 'kv_parallel_size', 'kv_parallel_size', 1, source) ?? 1;
  const device = o.kv_buffer_device ?? 'cpu';
  if (typeof device !== 'string' || !/^[a-z][a-z0-9_]*$/.test(device)) throw fail('kv_buffer_device', device, "a device type such as 'cpu', 'npu' or 'cuda'", source);
  const modulePath = o.kv_connector_module_path;
  if (modulePath !== undefined && typeof modulePath !== 'string') throw fail('kv_connector_module_path', modulePath, 'a string', source);
  if (o.kv_buffer_size !== undefined && (typeof o.kv_buffer_size !== 'number' || !(o.kv_buffer_size >= 0))) {
    throw fail('kv_buffer_size', o.kv_buffer_size, 'a non-negative number', source);
  }
  if (o.kv_ip !== undefined && typeof o.kv_ip !== 'string') throw fail('kv_ip', o.kv_ip, 'a string', source);
  const extra = o.kv_connector_extra_config;
  if (extra === null || typeof extra !== 'object' || Array.isArray(extra)) {
    throw fail('kv_connector_extra_config', extra, 'an object with "prefill" and "decode" ({ "dp_size", "tp_size" })', source);
  }
  const ex = extra as Record<string, unknown>;
  const prefill = parallelField(ex, 'prefill', source);
  const decode = parallelField(ex, 'decode', source);
  // vLLM's own connector also lets a decode gather from fewer prefill ranks (each writes into several).
  const vllmWiderDecode = ex.side_channel === 'vllm' && decode.tpSize > prefill.tpSize && decode.tpSize % prefill.tpSize === 0;
  if (!vllmWiderDecode && (prefill.tpSize < decode.tpSize || prefill.tpSize % decode.tpSize !== 0)) {
    throw new MooncakeError(
      'INVALID_CONFIG',
      `${source}: kv_connector_extra_config.prefill.tp_size (${prefill.tpSize}) must be a multiple of decode.tp_size (${decode.tpSize})`,
      { details: { field: 'kv_connector_extra_config.prefill.tp_size', value: prefill.tpSize, source } },
    );
  }
  const sideChannel = ex.side_channel ?? 'mooncake-node';
  if (typeof sideChannel !== 'string' || !(KV_SIDE_CHANNELS as readonly string[]).includes(sideChannel)) {
    throw fail('kv_connector_extra_config.side_channel', ex.side_channel, KV_SIDE_CHANNELS.map((c) => `"${c}"`).join(' or '), source);
  }
  const profile = ex.vllm_ascend_profile ?? '0.23';
  if (typeof profile !== 'string' || !(VLLM_ASCEND_PROFILES as readonly string[]).includes(profile)) {
    throw fail('kv_connector_extra_config.vllm_ascend_profile', ex.vllm_ascend_profile, VLLM_ASCEND_PROFILES.map((c) => `"${c}"`).join(' or '), source);
  }
  const bootstrap = ex.bootstrap_server_address;
  if (bootstrap !== undefined && (typeof bootstrap !== 'string' || !/^(\[[^\]]+\]|[^:/\s]+):\d{1,5}$/.test(bootstrap))) {
    throw fail('kv_connector_extra_config.bootstrap_server_address', bootstrap, "'host:port'", source);
  }
  if (sideChannel === 'vllm-ascend' && kvPort === undefined) {
    throw fail('kv_port', o.kv_port, 'set with side_channel "vllm-ascend" (peers compute every rank\'s port from it)', source);
  }
  if (kvPort !== undefined) {
    const span = Math.max(prefill.dpSize * prefill.tpSize, decode.dpSize * decode.tpSize);
    if (kvPort + span - 1 > 65535) throw fail('kv_port', o.kv_port, `at most ${65536 - span} (kv_port + dp_size × tp_size − 1 must be a port)`, source);
  }
  return {
    connector,
    mode: KV_CONNECTORS[connector],
    role: role as KvRole,
    kvPort,
    engineId: engineId as string,
    kvRank,
    kvParallelSize,
    bufferDevice: device,
    connectorModulePath: modulePath as string | undefined,
    prefill,
    decode,
    sideChannel: sideChannel as KvSideChannelName,
    bootstrapServerAddress: bootstrap as string | undefined,
    vllmAscendProfile: profile as VllmAscendProfile,
    extraConfig: ex,
    warnings,
  };
}

function hostPort(field: string, v: unknown, source: string): HostPort | undefined {
  if (v === undefined || v === null) return undefined;
  const m = typeof v === 'string' ? /^\[([^\]]+)\]:(\d{1,5})$/.exec(v.trim()) ?? /^([^:/\s]+):(\d{1,5})$/.exec(v.trim()) : null;
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535) throw fail(field, v, "'host:port' with a port in [1, 65535]", source);
  return { host: m[1], port };
}

const KNOWN_MOONCAKE_KEYS = new Set(['prefill_url', 'decode_url', 'metadata_backend', 'metadata_server', 'protocol', 'device_name', 'local_hostname', 'global_segment_size', 'local_buffer_size', 'master_server_address']);

/** Parses `mooncake.json` (a JSON string or the parsed object). */
export function parseMooncakeConfig(input: string | object, source = 'mooncake.json'): MooncakeConfig {
  const o = asObject(input, source);
  const warnings: string[] = [];
  for (const k of Object.keys(o)) if (!KNOWN_MOONCAKE_KEYS.has(k)) warnings.push(`unknown key '${k}' ignored`);
  const prefillUrl = hostPort('prefill_url', o.prefill_url, source);
  const decodeUrl = hostPort('decode_url', o.decode_url, source);
  let backend: MetadataBackend | undefined;
  if (o.metadata_backend !== undefined && o.metadata_backend !== null) {
    const b = typeof o.metadata_backend === 'string' ? o.metadata_backend.toLowerCase() : o.metadata_backend;
    if (typeof b !== 'string' || !METADATA_BACKENDS.includes(b as MetadataBackend)) {
      throw fail('metadata_backend', o.metadata_backend, METADATA_BACKENDS.map((x) => `"${x}"`).join(', '), source);
    }
    backend = b as MetadataBackend;
  }
  const server = o.metadata_server;
  if (server !== undefined && (typeof server !== 'string' || server.trim() === '')) {
    throw fail('metadata_server', server, 'a non-empty string such as "http://127.0.0.1:8080/metadata"', source);
  }
  const protocol = o.protocol ?? 'tcp';
  if (typeof protocol !== 'string' || !MOONCAKE_PROTOCOLS.includes(protocol)) throw fail('protocol', protocol, MOONCAKE_PROTOCOLS.map((x) => `"${x}"`).join(', '), source);
  for (const f of ['device_name', 'local_hostname'] as const) {
    if (o[f] !== undefined && typeof o[f] !== 'string') throw fail(f, o[f], 'a string', source);
  }
  const cfg: MooncakeConfig = {
    prefillUrl,
    decodeUrl,
    metadataBackend: backend,
    metadataServer: server === undefined ? undefined : server.trim(),
    protocol,
    deviceName: o.device_name as string | undefined,
    localHostname: o.local_hostname as string | undefined,
    warnings,
  };
  if (cfg.metadataServer !== undefined) metadataConnectionString(cfg, source);
  return cfg;
}

/** Reads and parses mooncake.json from `path` (default `$MOONCAKE_CONFIG_PATH`). */
export function loadMooncakeConfig(path: string | undefined = process.env.MOONCAKE_CONFIG_PATH): MooncakeConfig {
  if (path === undefined || path === '') {
    throw new MooncakeError('INVALID_CONFIG', 'MOONCAKE_CONFIG_PATH is not set: point it at mooncake.json', { details: { field: 'MOONCAKE_CONFIG_PATH' } });
  }
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new MooncakeError('INVALID_CONFIG', `cannot read mooncake.json at ${path} (MOONCAKE_CONFIG_PATH): ${(err as Error).message}`, {
      cause: err,
      details: { field: 'MOONCAKE_CONFIG_PATH', value: path },
    });
  }
  return parseMooncakeConfig(text, path);
}

/**
 * The metadata connection string mooncake.json selects: `metadata_server` with a scheme as is; without one
 * it gets the backend's scheme (`http://host:port/metadata`, `etcd://…`, `redis://…`). A store backend
 * without `metadata_server` is an error; `p2phandshake` gives `P2PHANDSHAKE`.
 */
export function metadataConnectionString(cfg: MooncakeConfig, source = 'mooncake.json'): string {
  const server = cfg.metadataServer;
  if (cfg.metadataBackend === 'p2phandshake') return P2P_HANDSHAKE;
  if (server === undefined) {
    throw new MooncakeError(
      'INVALID_CONFIG',
      `${source}: metadata_backend "${cfg.metadataBackend ?? 'http'}" needs metadata_server (e.g. "http://127.0.0.1:8080/metadata", served by \`mooncake-node metadata-server\`), or pass metadataServer`,
      { details: { field: 'metadata_server', source } },
    );
  }
  let conn = server;
  if (!server.includes('://') && server !== P2P_HANDSHAKE) {
    const backend = cfg.metadataBackend ?? 'http';
    conn = backend === 'http' ? `http://${server}${server.includes('/') ? '' : '/metadata'}` : `${backend}://${server}`;
  }
  let kind: string;
  try {
    kind = parseMetadataConnectionString(conn).kind;
  } catch {
    throw fail('metadata_server', server, 'a metadata connection string (http://host:port/metadata, etcd://host:2379, redis://host:6379)', source);
  }
  const backend = cfg.metadataBackend;
  if (backend !== undefined && kind !== backend) {
    throw fail('metadata_server', server, `a ${backend} address to match metadata_backend "${backend}"`, source);
  }
  return conn;
}

/** The 'vllm' side channel's options from the transfer config, the worker context and the environment. */
function vllmOptions(transfer: KvTransferConfig, ctx: KvWorkerContext): NonNullable<KvRankOptions['vllm']> {
  const env = process.env.VLLM_MOONCAKE_BOOTSTRAP_PORT;
  let port = ctx.bootstrapPort ?? ctx.overrides?.vllm?.bootstrapPort;
  if (port === undefined && env !== undefined && env !== '') {
    if (!/^\d{1,5}$/.test(env) || Number(env) > 65535) {
      throw new MooncakeError('INVALID_CONFIG', `VLLM_MOONCAKE_BOOTSTRAP_PORT must be a port, got ${JSON.stringify(env)}`, { details: { field: 'VLLM_MOONCAKE_BOOTSTRAP_PORT', value: env } });
    }
    port = Number(env);
  }
  return {
    ...ctx.overrides?.vllm,
    ...(port !== undefined ? { bootstrapPort: port } : {}),
    ...(transfer.bootstrapServerAddress !== undefined ? { bootstrapAddress: transfer.bootstrapServerAddress } : {}),
  };
}

export interface KvWorkerContext {
  /** This worker's data-parallel rank. */
  dpRank: number;
  /** This worker's tensor-parallel rank. */
  tpRank: number;
  layout: KvLayoutSpec | KvLayout;
  totalKvHeads?: number;
  caches?: KvCachesInput;
  /** Overrides mooncake.json's metadata server. */
  metadataServer?: string;
  /** Use the built-in TCP transport when mooncake.json asks for another protocol (as upstream's MC_FORCE_TCP). Default: $MC_FORCE_TCP. */
  forceTcp?: boolean;
  /** Extra options (timeouts, engine options, ...). */
  overrides?: Partial<KvRankOptions>;
  /** 'vllm' side channel: the bootstrap port a prefill serves (default $VLLM_MOONCAKE_BOOTSTRAP_PORT, else 8998). */
  bootstrapPort?: number;
}

/**
 * Options for the KvProducer (kv_producer) or KvConsumer (kv_consumer) of one worker rank. The rank's
 * address is mooncake.json's prefill_url/decode_url host (its port is vLLM v0's pipe port, unused);
 * kv_port is the base of the handshake ports. Protocols other than tcp are NOT_SUPPORTED_TRANSPORT unless
 * forceTcp (or MC_FORCE_TCP=1).
 */
export function kvOptionsFromConfig(transfer: KvTransferConfig, mooncake: MooncakeConfig | undefined, ctx: KvWorkerContext): KvRankOptions & { role: KvRole } {
  const side = transfer.role === 'kv_consumer' ? transfer.decode : transfer.prefill;
  if (!Number.isSafeInteger(ctx.dpRank) || ctx.dpRank < 0 || ctx.dpRank >= side.dpSize) {
    throw new MooncakeError('INVALID_CONFIG', `dpRank ${ctx.dpRank} is outside [0, ${side.dpSize}) (dp_size of this role)`, { details: { field: 'dpRank', value: ctx.dpRank } });
  }
  if (!Number.isSafeInteger(ctx.tpRank) || ctx.tpRank < 0 || ctx.tpRank >= side.tpSize) {
    throw new MooncakeError('INVALID_CONFIG', `tpRank ${ctx.tpRank} is outside [0, ${side.tpSize}) (tp_size of this role)`, { details: { field: 'tpRank', value: ctx.tpRank } });
  }
  validateTpMapping({ attention: 'mla', totalHeads: 1, prefillTp: transfer.prefill.tpSize, decodeTp: transfer.decode.tpSize, ...(transfer.sideChannel === 'vllm' ? { selection: 'vllm' as const } : {}) });
  const protocol = mooncake?.protocol ?? 'tcp';
  const forceTcp = ctx.forceTcp ?? (process.env.MC_FORCE_TCP !== undefined && process.env.MC_FORCE_TCP !== '' && process.env.MC_FORCE_TCP !== '0');
  if (protocol !== 'tcp' && !forceTcp) {
    throw new MooncakeError(
      'NOT_SUPPORTED_TRANSPORT',
      `mooncake.json protocol "${protocol}" is not available in mooncake-node's built-in engine (tcp); set "protocol": "tcp", or MC_FORCE_TCP=1 / forceTcp to use tcp`,
      { details: { field: 'protocol', value: protocol } },
    );
  }
  const vllmAscend = transfer.sideChannel === 'vllm-ascend';
  const vllm = transfer.sideChannel === 'vllm';
  const noStore = vllmAscend || vllm;
  const metadataServer = noStore ? undefined : ctx.metadataServer ?? (mooncake ? metadataConnectionString(mooncake) : undefined);
  if (metadataServer === undefined && !noStore) {
    throw new MooncakeError('INVALID_CONFIG', 'no metadata server: give mooncake.json (metadata_server) or metadataServer', { details: { field: 'metadataServer' } });
  }
  if (!noStore && metadataServer === P2P_HANDSHAKE) {
    throw new MooncakeError('INVALID_CONFIG', 'the KV handshake runs over a metadata store; metadata_backend "p2phandshake" has none (use "http" with metadata_server)', {
      details: { field: 'metadata_backend', value: 'p2phandshake' },
    });
  }
  const url = transfer.role === 'kv_consumer' ? mooncake?.decodeUrl : mooncake?.prefillUrl;
  const host = url?.host ?? mooncake?.localHostname;
  // kv_buffer_device labels caches given by address (device memory); host Buffers stay 'cpu:0', and regions
  // already registered (allocateDeviceMemory) keep their own location.
  const byAddress = ctx.caches?.regions.every((r) => !(r instanceof Uint8Array) && !(r instanceof MemoryRegion)) ?? false;
  const caches = ctx.caches && ctx.caches.location === undefined && transfer.bufferDevice !== 'cpu' && byAddress
    ? { ...ctx.caches, location: `${transfer.bufferDevice}:${ctx.dpRank * side.tpSize + ctx.tpRank}` } // vllm-ascend's device id without ASCEND_RT_VISIBLE_DEVICES
    : ctx.caches;
  return {
    ...ctx.overrides,
    engineId: transfer.engineId,
    role: transfer.role,
    dpRank: ctx.dpRank,
    tpRank: ctx.tpRank,
    prefill: transfer.prefill,
    decode: transfer.decode,
    layout: ctx.layout,
    ...(ctx.totalKvHeads !== undefined ? { totalKvHeads: ctx.totalKvHeads } : {}),
    ...(caches !== undefined ? { caches } : {}),
    ...(metadataServer !== undefined ? { metadataServer } : {}),
    ...(vllmAscend ? { sideChannel: 'vllm-ascend' as const, vllmAscend: { ...ctx.overrides?.vllmAscend, profile: transfer.vllmAscendProfile } } : {}),
    ...(vllm ? { sideChannel: 'vllm' as const, vllm: vllmOptions(transfer, ctx) } : {}),
    ...(host !== undefined ? { host } : {}),
    ...(transfer.kvPort !== undefined ? { kvPort: transfer.kvPort } : {}),
  };
}
