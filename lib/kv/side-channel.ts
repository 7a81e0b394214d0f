/**
 * The pluggable part of the KV layer: how ranks find each other, exchange KV metadata and signal
 * completion. Planning, rank mapping and the batches themselves (rank.ts, plan.ts, rank-map.ts) are shared;
 * a side channel only answers "where is rank r of the instance these params name", "tell that rank we are
 * done" and delivers the other side's signals as KvMessages.
 *
 * Implementations:
 * - `mooncake-node` (mooncake-channel.ts): registry entries in the metadata store, JSON notifications over
 *   the engine's handshake port. Node <-> Node.
 * - `vllm-ascend` (vllm-ascend/channel.ts): vllm-ascend's MooncakeConnector side channel, ZMQ + msgpack on
 *   the handshake ports, in its released wire profiles. Node <-> vllm-ascend.
 *
 * A new one (vLLM's own MooncakeConnector, say) implements KvSideChannel, adds its name to
 * KV_SIDE_CHANNELS and a case to createSideChannel (channels.ts); KvProducer/KvConsumer need no change.
 * Where the pieces a channel may need plug in:
 * - a peer that announces itself instead of being asked (vLLM's decode sends its MooncakeXferMetadata to
 *   the prefill): `lookup` may wait, bounded by its signal, for that message keyed by something in the
 *   params (a transfer id), and `start` binds what receives it;
 * - per-request facts in the params (a transfer id): `transferParams` is the one place params are made,
 *   and `sendDone` gets back the params the consumer was given, so whatever went out can be echoed;
 * - request tokens (tokens.ts): a channel that can carry them (`tokens`) puts `extra.token` in the params as
 *   `remote_token` and echoes the params' token in its signals; KvProducer / KvConsumer then refuse
 *   signals without the right one. `onMessage` says whether a signal was accepted, so a channel whose
 *   protocol can tell the sender (a rejected notify) does;
 * - bounds: a channel refuses a message larger than a rank of this layout ever sends before parsing it,
 *   and reports it (`onRefused`); early messages (a "done" before `hold`) are kept by EarlyMessages
 *   (rank-base.ts), bounded by count and bytes, for a limited time;
 * - stale KV: a producer's hold fence (fence.ts) is registered before `start` (`ctx.fence`); a channel
 *   that can tell consumers its address does (the mooncake-node registry entry), and a consumer's reads
 *   from a peer whose KvPeer has `fence` are checked against it.
 */
import { MooncakeError } from '../errors';
import type { TransferEngine, TransferEngineOptions } from '../engine';
import type { KvCaches } from './caches';
import type { KvMessage } from './messages';
import type { KvMetrics, KvRefusal } from './metrics';
import type { KvRankOptions, ResolvedKvOptions } from './options';
import type { KvTransferParams, KvTransferParamsWire } from './params';
import type { KvPeer } from './registry';

export const KV_SIDE_CHANNELS = ['mooncake-node', 'vllm-ascend'] as const;
export type KvSideChannelName = (typeof KV_SIDE_CHANNELS)[number];

/** What a side channel is started with: the rank it serves. */
export interface KvSideChannelContext {
  options: ResolvedKvOptions;
  raw: KvRankOptions;
  side: 'prefill' | 'decode';
  engine: TransferEngine;
  caches: KvCaches;
  /** Producer: address of the rank's hold fence (fence.ts), for channels that can tell peers where it is. */
  fence?: bigint;
  metrics: KvMetrics;
  /** Signals from the other side: "done" (pull), "push_start"/"push_done" (push). False: refused. */
  onMessage(m: KvMessage): boolean;
  /** A message the channel itself refused (too large, malformed): counted and announced by the rank. */
  onRefused(r: KvRefusal): void;
  /** Background problems (a failed heartbeat, a malformed request). */
  onWarning(e: MooncakeError): void;
}

/** How a consumer rank finished with a producer rank's blocks. */
export interface KvDoneResult {
  ok: boolean;
  /** The producer's block ids that did not arrive. */
  failedBlockIds: number[];
}

export interface KvSideChannel {
  readonly name: KvSideChannelName;
  /**
   * True when the channel carries request tokens (tokens.ts): `transferParams` puts `extra.token` in the
   * params and the other side's signals echo it, so signals without it are refused.
   */
  readonly tokens: boolean;
  /** Engine options this channel needs when the rank creates its engine (metadata store, RPC port). */
  engineOptions(): Partial<TransferEngineOptions>;
  /** Throws INVALID_CONFIG when a caller-supplied engine cannot serve this channel. */
  checkEngine(engine: TransferEngine): void;
  /** Publishes the rank (registry entry, listening socket). Called once, after the caches are registered. */
  start(ctx: KvSideChannelContext): Promise<void>;
  /** Where peers reach this rank's side channel (a registry key, a `host:port`). */
  readonly address: string;
  /**
   * The kv_transfer_params naming this rank for a request (pull: the producer hands them to the proxy;
   * push: the consumer does). `extra` carries per-request facts only the caller knows (prompt length,
   * last token), for channels whose params include them.
   */
  transferParams(requestId: string, blockIds: readonly number[], extra?: KvParamsExtra): KvTransferParamsWire;
  /** Validates kv_transfer_params as this channel needs them (parseKvTransferParams, maybe stricter). */
  parseParams(input: unknown): KvTransferParams;
  /** Throws INVALID_CONFIG when `params` were produced by a peer speaking another side channel. */
  checkParams(params: KvTransferParams): void;
  /** Rank `tpRank` of the other side's instance that `params` name: its layout, tensors and segment. */
  lookup(params: KvTransferParams, tpRank: number, signal?: AbortSignal): Promise<KvPeer>;
  /** Rank (dp, tp) of instance `engineId`, for warm-up; undefined when the channel cannot address ranks without params. */
  lookupRank?(engineId: string, dpRank: number, tpRank: number): Promise<KvPeer>;
  /** A transfer with `peer` failed: forget what is cached about it. */
  invalidate(peer: KvPeer): void;
  /**
   * Consumer -> producer (pull): this rank is finished with the blocks of `params` held by the producer's
   * rank `tpRank` (`peer` when the lookup succeeded). Resolves false when it could not be delivered.
   */
  sendDone(params: KvTransferParams, tpRank: number, peer: KvPeer | undefined, result: KvDoneResult): Promise<boolean>;
  /**
   * Consumer, push: a request is now expected into `blockIds` (KvConsumer.expect). For a protocol in which
   * the decode announces itself to the prefill (vLLM's MooncakeXferMetadata); the channels here need not.
   */
  announce?(requestId: string, blockIds: readonly number[], params: KvTransferParamsWire): void;
  /** Producer -> consumer (push): push_start / push_done for `peer`. Resolves false when not delivered. */
  sendPush(peer: KvPeer, signal: KvPushSignal): Promise<boolean>;
  /** Stops serving and forgets peers. Idempotent. */
  close(): Promise<void>;
}

/** What a producer tells a consumer rank in push mode (the channel adds who is sending). */
export type KvPushSignal =
  | { type: 'push_start'; request_id: string; token?: string }
  | { type: 'push_done'; request_id: string; ok: boolean; failed_block_ids: number[]; bytes: number; ranges: number; token?: string };

/** Per-request facts for the params of channels that carry them (vllm-ascend's request_finished). */
export interface KvParamsExtra {
  /** Tokens of the prompt (num_prompt_blocks = ceil(tokens / block size); default: the block count). */
  promptTokens?: number;
  /** The token prefill produced (`last_token_id`). */
  lastTokenId?: number;
  /** Push: tokens the decode's prefix cache already holds (`remote_cached_tokens`). */
  cachedTokens?: number;
  /** The request token (tokens.ts), for channels that carry one (`remote_token`). */
  token?: string;
}
