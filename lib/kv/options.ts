/**
 * The options of KvProducer and KvConsumer (one object per rank), their defaults and validation.
 * `kvOptionsFromConfig` (config.ts) builds them from vLLM's `--kv-transfer-config` and `mooncake.json`.
 */
import { MooncakeError, describeValue } from '../errors';
import type { TransferEngine, TransferEngineOptions } from '../engine';
import { KvLayout, type KvLayoutSpec } from './layout';
import { validateTpMapping, type TpMapping } from './rank-map';
import type { KvCachesInput } from './caches';
import { KV_SIDE_CHANNELS, type KvSideChannelName } from './side-channel';
import { resolveHoldKey } from './tokens';

export type KvRole = 'kv_producer' | 'kv_consumer' | 'kv_both';

/** vllm-ascend's released MooncakeConnector wire profiles: flat metadata (<= 0.18) or per layer (>= 0.23). */
export type VllmAscendProfile = '0.18' | '0.23';
export const VLLM_ASCEND_PROFILES: readonly VllmAscendProfile[] = ['0.18', '0.23'];

export interface VllmAscendOptions {
  /** Which released wire profile the vllm-ascend peers speak (default '0.23'). */
  profile?: VllmAscendProfile;
  /** vLLM layer names, one per layer, for the 0.23 metadata (default `model.layers.<i>.self_attn.attn`). */
  layerNames?: readonly string[];
  /** Bytes per element of the caches (default 2: bf16/fp16), for the 0.23 metadata's kv_cache_spec. */
  dtypeBytes?: number;
}

export interface KvParallelSize {
  dpSize: number;
  tpSize: number;
}

export interface KvRankOptions {
  /** The instance's engine id (`engine_id`); unique per prefill or decode instance. No '/'. */
  engineId: string;
  /**
   * How ranks find each other and signal completion (default 'mooncake-node': registry entries in the
   * metadata store, Node <-> Node). 'vllm-ascend': vllm-ascend's MooncakeConnector side channel (ZMQ +
   * msgpack on kv_port + rank), to pair with real vllm-ascend nodes; needs `kvPort` and the optional
   * packages `zeromq` and `msgpackr`. Both sides of a pair must use the same one.
   */
  sideChannel?: KvSideChannelName;
  /** Details of the 'vllm-ascend' side channel. */
  vllmAscend?: VllmAscendOptions;
  /** Role published in the registry. Default: the class's ('kv_producer' / 'kv_consumer'); 'kv_both' is accepted by both. */
  role?: KvRole;
  /** This rank's data-parallel rank (default 0). */
  dpRank?: number;
  /** This rank's tensor-parallel rank (default 0). */
  tpRank?: number;
  /** Parallel sizes of the prefill instances (`kv_connector_extra_config.prefill`). */
  prefill: KvParallelSize;
  /** Parallel sizes of the decode instances (`kv_connector_extra_config.decode`). */
  decode: KvParallelSize;
  /** This rank's KV-cache layout (its own head shard). */
  layout: KvLayoutSpec | KvLayout;
  /** The model's KV heads, for head slicing. Default: layout.numHeads × this side's tp size (MHA), 1 (MLA). */
  totalKvHeads?: number;
  /** Memory holding the caches (registered once). Default: host Buffers allocated for the layout. */
  caches?: KvCachesInput;
  /** Metadata backend of the KV registry (and of the engine it creates): e.g. `http://127.0.0.1:8080/metadata`. */
  metadataServer?: string;
  /** Use this engine instead of creating one (it is not closed by close()). */
  engine?: TransferEngine;
  /** Options for the engine this rank creates (metadataServer comes from above). */
  engineOptions?: Partial<Omit<TransferEngineOptions, 'metadataServer'>>;
  /** Address peers use to reach this rank (the engine's advertiseAddress). */
  host?: string;
  /**
   * Base of the ranks' handshake ports (`kv_port`): this rank's engine listens on
   * kvPort + dpRank × tpSize + tpRank, vllm-ascend's handshake_port. Default: a free port.
   */
  kvPort?: number;
  /** How often the registry entry is rewritten with a fresh heartbeat (default 2000 ms). */
  heartbeatMs?: number;
  /** A peer entry whose heartbeat is older than this is dead unless a handshake probe answers (default 3 × heartbeatMs + 2000). */
  staleAfterMs?: number;
  /** Default per-request transfer timeout (default 30000 ms, upstream's MC_TRANSFER_TIMEOUT). */
  transferTimeoutMs?: number;
  /** Timeout of one KV notification (connect + reply; default 3000 ms, 3 tries). */
  notifyTimeoutMs?: number;
  /** Producer: force-free held blocks when no "done" arrives within this (default 480000 ms, vllm-ascend tutorials). */
  abortTimeoutMs?: number;
  /** Consumer, push mode: how often a producer that started pushing is probed (default 1000 ms). */
  probeIntervalMs?: number;
  /** Cluster namespace of the registry keys. Default `$MC_METADATA_CLUSTER_ID`. */
  clusterId?: string;
  /**
   * Secret from which request tokens are derived (tokens.ts): the token in kv_transfer_params that every
   * "done" / push signal must echo. At least 16 bytes, the same on every rank of an instance. Default
   * `$MC_KV_HOLD_KEY`, else a random key per process, which suits ranks that share a process; ranks of one
   * instance in separate processes must be given the same key.
   */
  holdKey?: string | Uint8Array;
  /**
   * Messages for requests not held / expected yet ("done" before `hold`, pushes before `expect`): kept for
   * `ttlMs` (default 30000), at most `maxCount` (default 4096) and `maxBytes` (default 4 MiB); beyond that,
   * new ones are refused and counted (`metrics().refused['early-full']`, a 'refused' event).
   */
  earlyMessages?: { maxCount?: number; maxBytes?: number; ttlMs?: number };
  /**
   * Consumer: check the producer's hold fence before and after each pull's data read (default true), so a
   * pull that raced a force-free fails with STALE_KV instead of returning another request's KV. Costs two
   * small reads per producer rank and pull (measured: +0.4 ms on loopback). Producers that publish no
   * fence (vllm-ascend peers) are read unchecked either way.
   */
  detectStaleKv?: boolean;
}

export interface ResolvedKvOptions {
  engineId: string;
  sideChannel: KvSideChannelName;
  vllmAscend: { profile: VllmAscendProfile; layerNames: string[]; dtypeBytes: number };
  role: KvRole;
  dpRank: number;
  tpRank: number;
  prefill: KvParallelSize;
  decode: KvParallelSize;
  layout: KvLayout;
  mapping: TpMapping;
  totalKvHeads: number;
  metadataServer: string | undefined;
  host: string | undefined;
  kvPort: number | undefined;
  heartbeatMs: number;
  staleAfterMs: number;
  transferTimeoutMs: number;
  notifyTimeoutMs: number;
  abortTimeoutMs: number;
  probeIntervalMs: number;
  clusterId: string | undefined;
  holdKey: Buffer;
  earlyMessages: { maxCount: number; maxBytes: number; ttlMs: number };
  detectStaleKv: boolean;
}

function invalid(field: string, value: unknown, what: string): MooncakeError {
  return new MooncakeError('INVALID_CONFIG', `${field} must be ${what}, got ${describeValue(value)}`, { details: { field, value } });
}

function int(field: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw invalid(field, v, max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`);
  }
  return v;
}

/** Engine ids become registry key segments: non-empty, printable, no '/' or whitespace, at most 128 chars. */
export function checkEngineId(field: string, v: unknown): string {
  if (typeof v !== 'string' || !/^[\x21-\x7e]{1,128}$/.test(v) || v.includes('/')) {
    throw invalid(field, v, "a non-empty string of at most 128 printable characters without '/' or spaces");
  }
  return v;
}

function parallel(field: string, v: unknown): KvParallelSize {
  if (v === null || typeof v !== 'object') throw invalid(field, v, 'an object { dpSize, tpSize }');
  const p = v as Partial<KvParallelSize>;
  return { dpSize: int(`${field}.dpSize`, p.dpSize, 1), tpSize: int(`${field}.tpSize`, p.tpSize, 1) };
}

/** Validates options and fills defaults. `side` is the side this rank belongs to. */
export function resolveKvOptions(o: KvRankOptions, defaultRole: 'kv_producer' | 'kv_consumer'): ResolvedKvOptions {
  if (o === null || typeof o !== 'object') throw new MooncakeError('INVALID_CONFIG', 'options must be an object');
  const engineId = checkEngineId('engineId', o.engineId);
  const sideChannel = o.sideChannel ?? 'mooncake-node';
  if (!KV_SIDE_CHANNELS.includes(sideChannel)) throw invalid('sideChannel', sideChannel, KV_SIDE_CHANNELS.map((c) => `'${c}'`).join(' or '));
  const role = o.role ?? defaultRole;
  if (role !== defaultRole && role !== 'kv_both') {
    throw invalid('role', role, `'${defaultRole}' or 'kv_both' for a ${defaultRole === 'kv_producer' ? 'KvProducer' : 'KvConsumer'}`);
  }
  const prefill = parallel('prefill', o.prefill);
  const decode = parallel('decode', o.decode);
  const own = defaultRole === 'kv_producer' ? prefill : decode;
  const ownName = defaultRole === 'kv_producer' ? 'prefill' : 'decode';
  const dpRank = o.dpRank === undefined ? 0 : int('dpRank', o.dpRank, 0, own.dpSize - 1);
  const tpRank = o.tpRank === undefined ? 0 : int('tpRank', o.tpRank, 0, own.tpSize - 1);
  const layout = KvLayout.from(o.layout);
  let totalKvHeads: number;
  if (layout.attention === 'mla') totalKvHeads = 1;
  else if (o.totalKvHeads !== undefined) totalKvHeads = int('totalKvHeads', o.totalKvHeads, 1);
  else totalKvHeads = layout.numHeads * own.tpSize;
  const mapping: TpMapping = { attention: layout.attention, totalHeads: totalKvHeads, prefillTp: prefill.tpSize, decodeTp: decode.tpSize };
  if (sideChannel === 'vllm-ascend') mapping.selection = 'vllm-ascend';
  validateTpMapping(mapping);
  if (layout.attention === 'mha') {
    const expect = own.tpSize <= totalKvHeads ? totalKvHeads / own.tpSize : 1;
    if (layout.numHeads !== expect) {
      throw invalid('layout.numHeads', layout.numHeads, `${expect} (${totalKvHeads} KV heads over ${ownName} tp_size ${own.tpSize})`);
    }
  }
  if (o.metadataServer !== undefined && (typeof o.metadataServer !== 'string' || o.metadataServer === '')) {
    throw invalid('metadataServer', o.metadataServer, 'a metadata connection string such as http://127.0.0.1:8080/metadata');
  }
  if (o.metadataServer === undefined && o.engine === undefined && sideChannel === 'mooncake-node') {
    throw new MooncakeError('INVALID_CONFIG', 'metadataServer is required (e.g. http://127.0.0.1:8080/metadata) unless an engine is given', {
      details: { field: 'metadataServer' },
    });
  }
  if (o.host !== undefined && (typeof o.host !== 'string' || o.host === '')) throw invalid('host', o.host, 'a host name or IP address');
  let kvPort: number | undefined;
  if (o.kvPort !== undefined) {
    kvPort = int('kvPort', o.kvPort, 1, 65535);
    const last = kvPort + own.dpSize * own.tpSize - 1;
    if (last > 65535) throw invalid('kvPort', o.kvPort, `at most ${65535 - own.dpSize * own.tpSize + 1} (ports kvPort..kvPort+dp×tp-1 must exist)`);
  }
  if (sideChannel === 'vllm-ascend' && kvPort === undefined) {
    throw invalid('kvPort', o.kvPort, "an integer in [1, 65535] with the 'vllm-ascend' side channel (peers compute every rank's port from it)");
  }
  const vllmAscend = resolveVllmAscend(o.vllmAscend, layout.numLayers);
  const heartbeatMs = o.heartbeatMs === undefined ? 2000 : int('heartbeatMs', o.heartbeatMs, 10, 2 ** 31 - 1);
  const staleAfterMs = o.staleAfterMs === undefined ? 3 * heartbeatMs + 2000 : int('staleAfterMs', o.staleAfterMs, heartbeatMs + 1, 2 ** 31 - 1);
  return {
    engineId,
    sideChannel,
    vllmAscend,
    role,
    dpRank,
    tpRank,
    prefill,
    decode,
    layout,
    mapping,
    totalKvHeads,
    metadataServer: o.metadataServer,
    host: o.host,
    kvPort,
    heartbeatMs,
    staleAfterMs,
    transferTimeoutMs: o.transferTimeoutMs === undefined ? 30_000 : int('transferTimeoutMs', o.transferTimeoutMs, 1, 2 ** 31 - 1),
    notifyTimeoutMs: o.notifyTimeoutMs === undefined ? 3000 : int('notifyTimeoutMs', o.notifyTimeoutMs, 1, 2 ** 31 - 1),
    abortTimeoutMs: o.abortTimeoutMs === undefined ? 480_000 : int('abortTimeoutMs', o.abortTimeoutMs, 1, 2 ** 31 - 1),
    probeIntervalMs: o.probeIntervalMs === undefined ? 1000 : int('probeIntervalMs', o.probeIntervalMs, 10, 2 ** 31 - 1),
    clusterId: o.clusterId,
    holdKey: resolveHoldKey(o.holdKey),
    earlyMessages: resolveEarly(o.earlyMessages),
    detectStaleKv: bool('detectStaleKv', o.detectStaleKv, true),
  };
}

function bool(field: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw invalid(field, v, 'true or false');
  return v;
}

function resolveEarly(v: KvRankOptions['earlyMessages']): ResolvedKvOptions['earlyMessages'] {
  if (v !== undefined && (v === null || typeof v !== 'object')) throw invalid('earlyMessages', v, 'an object { maxCount, maxBytes, ttlMs }');
  return {
    maxCount: v?.maxCount === undefined ? 4096 : int('earlyMessages.maxCount', v.maxCount, 0, 1 << 20),
    maxBytes: v?.maxBytes === undefined ? 4 << 20 : int('earlyMessages.maxBytes', v.maxBytes, 0, 2 ** 31 - 1),
    ttlMs: v?.ttlMs === undefined ? 30_000 : int('earlyMessages.ttlMs', v.ttlMs, 1, 2 ** 31 - 1),
  };
}

function resolveVllmAscend(v: VllmAscendOptions | undefined, numLayers: number): ResolvedKvOptions['vllmAscend'] {
  if (v !== undefined && (v === null || typeof v !== 'object')) throw invalid('vllmAscend', v, 'an object { profile, layerNames, dtypeBytes }');
  const profile = v?.profile ?? '0.23';
  if (!VLLM_ASCEND_PROFILES.includes(profile)) throw invalid('vllmAscend.profile', profile, VLLM_ASCEND_PROFILES.map((p) => `'${p}'`).join(' or '));
  const names = v?.layerNames ?? [...Array(numLayers).keys()].map((i) => `model.layers.${i}.self_attn.attn`);
  if (!Array.isArray(names) || names.length !== numLayers || names.some((n) => typeof n !== 'string' || n === '') || new Set(names).size !== names.length) {
    throw invalid('vllmAscend.layerNames', v?.layerNames, `${numLayers} distinct non-empty layer names (one per layer)`);
  }
  const dtypeBytes = v?.dtypeBytes === undefined ? 2 : int('vllmAscend.dtypeBytes', v.dtypeBytes, 1, 16);
  return { profile, layerNames: [...names], dtypeBytes };
}
