/**
 * The KV handshake over the metadata backend. Every rank publishes one JSON entry under
 *
 *     mooncake/[<MC_METADATA_CLUSTER_ID>/]kv/<engine_id>/<dp_rank>/<tp_rank>
 *
 * with its role, parallel sizes, segment name, handshake address, layout and tensor/region addresses
 * (bigints as decimal strings), a producer's hold fence and, when no holdKey is configured, the key of its
 * request tokens; it rewrites it every `heartbeatMs` with a fresh `heartbeat` (ms since the epoch). It deletes the entry on close. Peers find a rank by computing its key (engine id and dp rank from
 * kv_transfer_params, tp rank from the rank mapping), so only get/set/remove of the MetadataStore interface
 * are used and any backend (HTTP, etcd, redis) works.
 *
 * An entry whose heartbeat is older than `staleAfterMs` belongs to a rank that is dead unless a handshake
 * probe to its address answers (which also covers clock skew between hosts).
 */
import { randomUUID } from 'node:crypto';
import { MooncakeError, isMooncakeError } from '../errors';
import { probe } from '../handshake';
import { metadataKeyPrefix } from '../metadata/keys';
import type { MetadataStore } from '../metadata/store';
import { KvLayout, type KvLayoutJson } from './layout';
import type { KvRole } from './options';

export const KV_REGISTRY_VERSION = 1;

/** The JSON stored under a rank's key. */
export interface KvRankEntry {
  version: number;
  engine_id: string;
  role: KvRole;
  dp_rank: number;
  tp_rank: number;
  dp_size: number;
  tp_size: number;
  /** The engine's segment name (for openSegment). */
  segment: string;
  /** The engine's advertised address and handshake (RPC) port: notifications and probes go there. */
  host: string;
  rpc_port: number;
  /** The instance's kv_port, when configured. */
  kv_port: number | null;
  total_kv_heads: number;
  layout: KvLayoutJson;
  /** Absolute address of every tensor (decimal strings), in tensor order. */
  tensors: string[];
  /** The registered regions (decimal-string addresses). */
  regions: { address: string; length: number }[];
  pid: number;
  /** Random per process start: a changed value means the rank restarted (new addresses). */
  instance: string;
  started_at: number;
  /** Date.now() of the last refresh. */
  heartbeat: number;
  /**
   * Producer: address (decimal string) of its hold fence, one little-endian uint32 per block, odd while
   * the block is held (see fence.ts). Consumers read it around their pulls to detect stale KV.
   */
  fence?: string;
  /**
   * The key this rank's request tokens are made under (base64url), published only when no holdKey is
   * configured, so the other ranks of its instance can check the tokens it issued (instance-keys.ts).
   */
  token_key?: string;
}

/** A peer rank as read from the registry. */
export interface KvPeer {
  key: string;
  entry: KvRankEntry;
  layout: KvLayout;
  tensors: bigint[];
  /** The peer's hold fence, when it publishes one. */
  fence?: bigint;
}

/** The key of a rank's entry. `clusterId` defaults to $MC_METADATA_CLUSTER_ID. */
export function kvRankKey(engineId: string, dpRank: number, tpRank: number, clusterId?: string): string {
  return `${metadataKeyPrefix(clusterId)}kv/${engineId}/${dpRank}/${tpRank}`;
}

/** Parses and checks an entry; MALFORMED_JSON when it is not one. */
export function parseRankEntry(key: string, text: string): KvPeer {
  let e: KvRankEntry;
  try {
    e = JSON.parse(text) as KvRankEntry;
  } catch (err) {
    throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} is not JSON`, { cause: err, details: { key } });
  }
  const ok = e !== null && typeof e === 'object' && e.version === KV_REGISTRY_VERSION && typeof e.segment === 'string' &&
    typeof e.host === 'string' && Number.isSafeInteger(e.rpc_port) && Array.isArray(e.tensors) && typeof e.heartbeat === 'number' &&
    e.layout !== null && typeof e.layout === 'object' && Number.isSafeInteger(e.tp_size) && Number.isSafeInteger(e.total_kv_heads);
  if (!ok) throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} is not a version ${KV_REGISTRY_VERSION} rank entry`, { details: { key } });
  let layout: KvLayout;
  try {
    layout = KvLayout.fromJSON(e.layout);
  } catch (err) {
    throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} has an invalid layout`, { cause: err, details: { key } });
  }
  if (e.tensors.length !== layout.tensorCount || e.tensors.some((t) => typeof t !== 'string' || !/^\d+$/.test(t))) {
    throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} has a bad tensor address list`, { details: { key } });
  }
  if (e.fence !== undefined && (typeof e.fence !== 'string' || !/^[1-9]\d{0,19}$/.test(e.fence))) {
    throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} has a bad fence address`, { details: { key } });
  }
  if (e.token_key !== undefined && (typeof e.token_key !== 'string' || !/^[A-Za-z0-9_-]{22,344}$/.test(e.token_key))) {
    throw new MooncakeError('MALFORMED_JSON', `KV registry entry ${key} has a bad token key`, { details: { key } });
  }
  return { key, entry: e, layout, tensors: e.tensors.map((t) => BigInt(t)), ...(e.fence !== undefined ? { fence: BigInt(e.fence) } : {}) };
}

/** Peers whose entries are cached at most; the oldest is forgotten first. */
const MAX_CACHED = 4096;

export interface KvRegistryOptions {
  heartbeatMs: number;
  staleAfterMs: number;
  clusterId?: string;
  /** Entries of peers are reused for this long before being fetched again (default heartbeatMs). */
  cacheMs?: number;
  /** Wall clock (ms since the epoch); tests may replace it. */
  now?: () => number;
  /** A heartbeat write failed (the next one retries). */
  onError?: (err: MooncakeError) => void;
}

export class KvRegistry {
  private readonly now: () => number;
  private readonly cacheMs: number;
  private readonly cache = new Map<string, { peer: KvPeer; fetched: number }>();
  private own: { key: string; entry: KvRankEntry } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private closed = false;
  private failedHeartbeats = 0;

  constructor(readonly store: MetadataStore, private readonly options: KvRegistryOptions) {
    this.now = options.now ?? Date.now;
    this.cacheMs = options.cacheMs ?? options.heartbeatMs;
  }

  /** Heartbeat writes that failed. */
  get heartbeatFailures(): number {
    return this.failedHeartbeats;
  }

  /** A fresh instance id for entries. */
  static instanceId(): string {
    return randomUUID();
  }

  key(engineId: string, dpRank: number, tpRank: number): string {
    return kvRankKey(engineId, dpRank, tpRank, this.options.clusterId);
  }

  /** Writes this rank's entry and keeps its heartbeat fresh until close(). */
  async publish(entry: Omit<KvRankEntry, 'heartbeat'>): Promise<string> {
    const key = this.key(entry.engine_id, entry.dp_rank, entry.tp_rank);
    this.own = { key, entry: { ...entry, heartbeat: this.now() } };
    await this.store.set(key, JSON.stringify(this.own.entry));
    this.timer = setInterval(() => this.beat(), this.options.heartbeatMs);
    this.timer.unref();
    return key;
  }

  private beat(): void {
    if (!this.own || this.writing || this.closed) return;
    const own = this.own;
    own.entry.heartbeat = this.now();
    this.writing = this.store
      .set(own.key, JSON.stringify(own.entry))
      .catch((err: unknown) => {
        this.failedHeartbeats++;
        const e = isMooncakeError(err) ? err : new MooncakeError('METADATA', `KV heartbeat of ${own.key} failed`, { cause: err });
        this.options.onError?.(e);
      })
      .finally(() => (this.writing = undefined));
  }

  /** A rank's entry as the store has it now (no cache, no liveness check); undefined when it has none. */
  async read(engineId: string, dpRank: number, tpRank: number, signal?: AbortSignal): Promise<KvPeer | undefined> {
    const key = this.key(engineId, dpRank, tpRank);
    const text = await this.store.get(key, { signal });
    return text === undefined ? undefined : parseRankEntry(key, text);
  }

  /**
   * A peer rank's entry. SEGMENT_NOT_FOUND when it has none; CONNECT_FAILED when its heartbeat is stale and
   * a probe of its handshake port does not answer (the rank is dead). Cached for `cacheMs`.
   */
  async lookup(engineId: string, dpRank: number, tpRank: number, options: { fresh?: boolean; signal?: AbortSignal } = {}): Promise<KvPeer> {
    const key = this.key(engineId, dpRank, tpRank);
    const now = this.now();
    const hit = this.cache.get(key);
    if (hit && !options.fresh && now - hit.fetched < this.cacheMs && now - hit.peer.entry.heartbeat <= this.options.staleAfterMs) {
      // Past half its life the entry is re-read in the background, so a steady stream of requests never
      // waits for the store (no entry is used longer than cacheMs, as before).
      if (now - hit.fetched >= this.cacheMs / 2 && !this.refreshing.has(key)) {
        const refresh = this.fetch(key, engineId, dpRank, tpRank, undefined)
          .catch(() => undefined)
          .finally(() => this.refreshing.delete(key));
        this.refreshing.set(key, refresh);
      }
      return hit.peer;
    }
    return this.fetch(key, engineId, dpRank, tpRank, options.signal);
  }

  private readonly refreshing = new Map<string, Promise<unknown>>();

  private async fetch(key: string, engineId: string, dpRank: number, tpRank: number, signal: AbortSignal | undefined): Promise<KvPeer> {
    const peer = await this.read(engineId, dpRank, tpRank, signal);
    if (peer === undefined) {
      this.cache.delete(key);
      throw new MooncakeError('SEGMENT_NOT_FOUND', `no KV rank ${engineId}/${dpRank}/${tpRank} in the registry (key ${key}): it never started or it closed`, {
        details: { key, engineId, dpRank, tpRank },
      });
    }
    const age = this.now() - peer.entry.heartbeat;
    if (age > this.options.staleAfterMs) {
      try {
        await probe(peer.entry.host, peer.entry.rpc_port, { connectTimeoutMs: 1000, timeoutMs: 2000, signal });
      } catch (err) {
        this.cache.delete(key);
        throw new MooncakeError('CONNECT_FAILED', `KV rank ${engineId}/${dpRank}/${tpRank} is dead: heartbeat ${Math.round(age)} ms old and ${peer.entry.host}:${peer.entry.rpc_port} does not answer a probe`, {
          cause: err,
          details: { key, engineId, dpRank, tpRank, heartbeatAgeMs: age },
        });
      }
    }
    this.cache.delete(key);
    this.cache.set(key, { peer, fetched: this.now() });
    if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    return peer;
  }

  /** Forgets a cached peer (after a failed transfer, so the next lookup reads the store). */
  invalidate(engineId: string, dpRank: number, tpRank: number): void {
    this.cache.delete(this.key(engineId, dpRank, tpRank));
  }

  /** Stops the heartbeat and deletes this rank's entry. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.writing;
    await Promise.allSettled([...this.refreshing.values()]);
    if (this.own) await this.store.remove(this.own.key).catch(() => false);
    await this.store.close();
  }
}
