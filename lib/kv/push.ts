/**
 * One push of a request by one prefill rank (KvProducer.push / pushLayerwise): every decode rank the rank
 * mapping sends this rank's heads to is looked up and told `push_start`, then written, either in one batch
 * per decode rank (the whole request) or in one batch per decode rank and layer (layerwise: each layer as
 * soon as prefill has computed it, so the transfer overlaps the rest of the prefill), and finally told
 * `push_done` with the blocks that did not arrive.
 */
import { MooncakeError } from '../errors';
import type { KvLayout } from './layout';
import type { KvFailureRecord, KvFailureStage } from './ledger';
import type { KvTransferParams } from './params';
import { planTransfer, type TransferPlan } from './plan';
import { asMooncakeError, failedBatch, mergePlans, type BatchResult, type KvRankCore } from './rank';
import { slicesByRank, targetsForPrefillRank, type HeadSlice } from './rank-map';
import type { KvPeer, KvRankEntry } from './registry';

/** What a push needs from the producer rank running it. */
export interface PushContext {
  core: KvRankCore;
  layout: KvLayout;
  tpRank: number;
  /** INVALID_CONFIG when the decode rank registered another tp size or head count than configured. */
  shapeError(e: KvRankEntry, name: string): MooncakeError | undefined;
  /** A push_done did not reach its decode rank (a NOTIFY failure: the decode keeps its blocks until its timeout). */
  undelivered(requestId: string, peer: NonNullable<KvFailureRecord['peer']>): void;
}

interface Target {
  decodeRank: number;
  slices: HeadSlice[];
  peer?: KvPeer;
  /** Set when the decode rank could not be found: nothing is written or sent to it. */
  failedEarly?: BatchResult;
  /** Its shape or plan is wrong: nothing more is written, every block fails, push_done still goes out. */
  spoiled?: boolean;
  failed: Set<number>;
  bytes: number;
  ranges: number;
  error?: MooncakeError;
  /** Where it failed first (the failure ledger's stage). */
  stage?: KvFailureStage;
}

/** The batch writing `slices` of the paired blocks into decode rank `peer`: all tensors, or those of one layer. */
export function pushPlan(ctx: PushContext, peer: KvPeer, slices: readonly HeadSlice[], local: number[], remote: number[], layer?: number): TransferPlan {
  const layout = ctx.layout;
  const mine = { layout, tensors: ctx.core.caches.tensorAddresses, blockIds: local };
  const theirs = { layout: peer.layout, tensors: peer.tensors, blockIds: remote };
  const per = layout.tensorsPerLayer;
  const range = layer === undefined ? undefined : { first: layer * per, end: (layer + 1) * per };
  return mergePlans(slices.map((s) => planTransfer({ ...mine, head: s.prefillHead }, { ...theirs, head: s.decodeHead }, s.count, range)));
}

export class PushRun {
  readonly requestId: string;
  /** The decode's request token, echoed in push_start and push_done so it can tell them from forgeries. */
  private readonly token: { token?: string };
  private readonly targets: Target[];
  private readonly ready: Promise<void>;
  private readonly writes: Promise<void>[] = [];

  constructor(
    private readonly ctx: PushContext,
    private readonly params: KvTransferParams,
    /** This rank's block ids, paired with params.remote_block_ids. */
    private readonly local: number[],
    private readonly deadline: number,
    private readonly signal: AbortSignal | undefined,
    /** Contact nobody (the params were refused). */
    idle = false,
  ) {
    this.requestId = params.remote_request_id;
    this.token = typeof params.remote_token === 'string' ? { token: params.remote_token } : {};
    const o = ctx.core.options;
    const byRank = idle ? new Map<number, HeadSlice[]>() : slicesByRank(targetsForPrefillRank(this.requestId, o.mapping, ctx.tpRank), 'decodeRank');
    // Ranks the side channel must answer although the mapping gives them none of this rank's heads (vLLM).
    if (!idle) for (const r of ctx.core.channel.peerRanks?.(this.requestId, ctx.tpRank) ?? []) if (!byRank.has(r)) byRank.set(r, []);
    this.targets = [...byRank].map(([decodeRank, slices]) => ({ decodeRank, slices, failed: new Set<number>(), bytes: 0, ranges: 0 }));
    this.ready = Promise.all(this.targets.map((t) => this.connect(t))).then(() => undefined);
  }

  /** Looks the decode rank up and tells it the push starts (not awaited: the writes need not wait for it). */
  private async connect(t: Target): Promise<void> {
    const p = this.params;
    const core = this.ctx.core;
    try {
      t.peer = await core.channel.lookup(p, t.decodeRank, this.signal);
    } catch (err) {
      t.failedEarly = failedBatch({ engineId: p.remote_engine_id, dpRank: p.remote_dp_rank ?? 0, tpRank: t.decodeRank, segment: '' }, this.local.length, asMooncakeError(err, 'looking up the decode rank failed'));
      return;
    }
    const e = t.peer.entry;
    void core.track(core.channel.sendPush(t.peer, { type: 'push_start', request_id: this.requestId, ...this.token }));
    const mismatch = this.ctx.shapeError(e, `${p.remote_engine_id}/${e.dp_rank}/${t.decodeRank}`);
    if (mismatch) this.spoil(t, mismatch);
  }

  /** Nothing more is written to `t`; every block fails with `error` (the decode rank is still told). */
  private spoil(t: Target, error: MooncakeError): void {
    t.spoiled = true;
    for (let i = 0; i < this.local.length; i++) t.failed.add(i);
    t.error ??= error;
    t.stage ??= 'REGISTRATION';
  }

  private plan(t: Target, peer: KvPeer, layer?: number): TransferPlan {
    return pushPlan(this.ctx, peer, t.slices, this.local, this.params.remote_block_ids, layer);
  }

  /** Writes to every decode rank that can be written: everything, or one layer. */
  private async write(layer?: number): Promise<void> {
    await this.ready;
    await Promise.all(
      this.targets.map(async (t) => {
        if (t.failedEarly || t.spoiled || !t.peer) return;
        let plan: TransferPlan;
        try {
          plan = this.plan(t, t.peer, layer);
        } catch (err) {
          this.spoil(t, asMooncakeError(err, 'planning the push failed'));
          return;
        }
        const r = await this.ctx.core.run('write', t.peer, plan, this.deadline, this.signal);
        t.bytes += r.peer.bytes;
        t.ranges += r.peer.ranges;
        for (const i of r.failed) t.failed.add(i);
        if (r.error || r.failed.length > 0) t.stage ??= r.stage;
        t.error ??= r.error;
      }),
    );
  }

  /** The whole request, one batch per decode rank. */
  writeAll(): Promise<void> {
    const w = this.write();
    this.writes.push(w);
    return w;
  }

  /** One layer's tensors, one batch per decode rank. */
  writeLayer(layer: number): Promise<void> {
    const w = this.write(layer);
    this.writes.push(w);
    return w;
  }

  /**
   * Once the writes started so far are done: every layer not written (`missing`) fails all blocks; each
   * decode rank that was found is told `push_done`. Returns one result per decode rank.
   */
  async finish(missing?: MooncakeError): Promise<BatchResult[]> {
    await this.ready;
    await Promise.all(this.writes);
    const core = this.ctx.core;
    const all = [...this.local.keys()];
    return Promise.all(
      this.targets.map(async (t) => {
        if (t.failedEarly) return t.failedEarly;
        const peer = t.peer!;
        const e = peer.entry;
        if (missing) {
          for (const i of all) t.failed.add(i);
          t.error ??= missing;
          t.stage ??= missing.code === 'ABORT_ERR' ? 'ABORT' : 'TIMEOUT';
        }
        const failed = [...t.failed].sort((a, b) => a - b);
        const error = t.error ?? missing;
        const delivered = await core.track(core.channel.sendPush(peer, {
          type: 'push_done',
          request_id: this.requestId,
          ok: failed.length === 0,
          failed_block_ids: failed.map((i) => this.params.remote_block_ids[i]),
          bytes: t.bytes,
          ranges: t.ranges,
          ...(error ? { error: error.message } : {}),
          ...this.token,
        }));
        if (!delivered) this.ctx.undelivered(this.requestId, { engineId: e.engine_id, dpRank: e.dp_rank, tpRank: e.tp_rank });
        const ok = failed.length === 0;
        return {
          peer: { engineId: e.engine_id, dpRank: e.dp_rank, tpRank: e.tp_rank, segment: e.segment, bytes: t.bytes, ranges: t.ranges, ok, ...(ok ? {} : { error: error?.code }) },
          failed,
          ...(ok ? {} : { error, stage: t.stage }),
        };
      }),
    );
  }
}
