/**
 * The timed part of a `bench kv` case, run by the initiator (the decode when it pulls, the prefill when
 * it pushes): requests through the KV layer (KvConsumer.pull, KvProducer.push / pushLayerwise), and the
 * same ranges through the bare engine (prepared batches of exactly the KV layer's plans) as the ceiling.
 *
 * A request's time is from the first rank's call to the last rank's outcome: when every rank of the
 * instance has its KV, i.e. what the request adds to time-to-first-token. Requests are held or expected
 * on the target a phase ahead, so no control traffic runs inside a timed window.
 */
import { performance } from 'node:perf_hooks';
import { MooncakeError } from '../../errors';
import type { PreparedBatch, TransferEngine } from '../../engine';
import { NotifySession } from '../../handshake';
import type { KvConsumer } from '../../kv/consumer';
import type { KvTransferOutcome } from '../../kv/metrics';
import type { KvTransferParamsWire } from '../../kv/params';
import type { KvProducer } from '../../kv/producer';
import { CpuMeter, HealthMeter } from '../stats';
import { initiatorSide, otherSide, requestId, slotBlocks, type KvCaseSpec } from './cases';
import type { ControlClient } from './control';
import type { RankGroup } from './ranks';
import type { TargetPhaseStats, TargetRequest } from './target';

/** The samples of one phase. */
export interface PhaseSamples {
  /** Per request, ms. */
  durations: number[];
  /** Layerwise: per request, ms from the last layer computed to the KV complete. */
  tails?: number[];
  bytes: number;
  ranges: number;
  seconds: number;
  cpuPercent: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  target?: TargetPhaseStats;
}

interface Req {
  k: number;
  requestId: string;
  slot: number;
  /** dp rank on this side and on the target's. */
  dp: number;
  targetDp: number;
}

interface Anchor {
  engine: TransferEngine;
  batch: PreparedBatch;
}

export interface PhaseOptions {
  concurrency: number;
  /** Simulated compute per layer (layerwise), ms. */
  layerComputeMs?: number;
  onRequest?: (done: number, total: number) => void;
}

/** Runs round `r`'s two phases in alternating order, so a drifting machine load does not favour one. */
export async function alternate(r: number, a: () => Promise<unknown>, b: () => Promise<unknown>): Promise<void> {
  await (r % 2 === 0 ? a() : b());
  await (r % 2 === 0 ? b() : a());
}

function sleepUntil(t: number): Promise<void> {
  const wait = t - performance.now();
  return wait <= 0 ? Promise.resolve() : new Promise((r) => setTimeout(r, wait));
}

export class CasePhases {
  /** Prepared engine batches per (dp, slot): the ranges one request moves, for the engine-only anchor. */
  private readonly anchors = new Map<string, Anchor[]>();
  private readonly layerAnchors = new Map<string, Anchor[]>();
  /** Ranges and bytes of one request, as the KV layer reported them. */
  requestRanges = 0;
  requestBytes = 0;

  constructor(
    readonly spec: KvCaseSpec,
    readonly group: RankGroup,
    readonly control: ControlClient,
  ) {}

  /** This process's side: decode when it pulls, prefill when it pushes. */
  get side(): 'prefill' | 'decode' {
    return initiatorSide(this.spec);
  }

  private requests(phase: string, n: number, first = 0): Req[] {
    const mine = this.spec[this.side].dpSize;
    const theirs = this.spec[otherSide(this.side)].dpSize;
    return Array.from({ length: n }, (_, i) => {
      const k = first + i;
      return { k, requestId: requestId(this.spec, phase, k), slot: k % this.spec.slots, dp: k % mine, targetDp: k % theirs };
    });
  }

  /** Holds (pull) or expects (push) the requests on the target; their params in order. */
  private announce(reqs: readonly Req[]): Promise<KvTransferParamsWire[]> {
    const requests: TargetRequest[] = reqs.map((r) => ({ requestId: r.requestId, dp: r.targetDp, slot: r.slot }));
    return this.control.call<KvTransferParamsWire[]>(this.spec.transfer === 'pull' ? 'hold' : 'expect', { caseId: this.spec.id, requests });
  }

  /** Waits until the target saw every request end well: holds released by "done", pushes received. */
  private async settle(reqs: readonly Req[]): Promise<void> {
    const r = await this.control.call<{ released: Record<string, number>; received: { ok: number; failed: number } }>('settled', { caseId: this.spec.id, requestIds: reqs.map((q) => q.requestId), timeoutMs: 60_000 });
    const bad = Object.entries(r.released).filter(([reason]) => reason !== 'done' && reason !== 'not-selected');
    if (bad.length > 0 || r.received.failed > 0) {
      throw new MooncakeError('PROTOCOL_ERROR', `the target saw requests end badly: released ${JSON.stringify(r.released)}, received ${JSON.stringify(r.received)}`);
    }
  }

  private blocks(slot: number): number[] {
    return slotBlocks(this.spec, this.side, slot);
  }

  /** One request through the KV layer on every rank of its dp group. */
  private async kvRequest(r: Req, params: KvTransferParamsWire, computeMs: number | undefined): Promise<{ ms: number; tail?: number; outcomes: KvTransferOutcome[] }> {
    const ranks = this.group.dp(r.dp);
    const blocks = this.blocks(r.slot);
    const t0 = performance.now();
    let outcomes: KvTransferOutcome[];
    let tail: number | undefined;
    if (this.spec.transfer === 'pull') {
      outcomes = await Promise.all((ranks as KvConsumer[]).map((c) => c.pull(params, blocks)));
    } else if (this.spec.transfer === 'push') {
      outcomes = await Promise.all((ranks as KvProducer[]).map((p) => p.push(params, blocks)));
    } else {
      const pushes = (ranks as KvProducer[]).map((p) => p.pushLayerwise(params, blocks));
      const layers = this.spec.model.layers;
      const c = computeMs ?? 0;
      for (let l = 0; l < layers; l++) {
        if (c > 0) await sleepUntil(t0 + (l + 1) * c);
        for (const p of pushes) p.layerReady(l);
      }
      const computed = performance.now();
      outcomes = await Promise.all(pushes.map((p) => p.done));
      tail = performance.now() - computed;
    }
    const ms = performance.now() - t0;
    const bad = outcomes.find((o) => !o.ok);
    if (bad) throw new MooncakeError(bad.error?.code ?? 'PROTOCOL_ERROR', `${this.spec.transfer} of ${r.requestId} failed: ${bad.error?.message ?? 'blocks missing'}`);
    return { ms, tail, outcomes };
  }

  /**
   * Layerwise: what the tail cannot avoid, through the bare engine. Per request, after `gapMs` of idle (the
   * compute before the last layer, untimed): one layer's batches, then one notify to each decode rank over
   * a kept-alive handshake connection, the way a push's completion message travels. No KV layer at all.
   */
  async layerFloorPhase(n: number, gapMs: number): Promise<PhaseSamples> {
    const notifier = new NotifySession();
    const notify = { name: 'mooncake-node/bench-kv', msg: '' };
    const limits = { connectTimeoutMs: 5000, timeoutMs: 5000 };
    try {
      const reqs = this.requests('floor', n);
      let bytes = 0;
      let ranges = 0;
      const t = await this.timed(reqs, 1, async (r) => {
        const batches = this.layerAnchors.get(`${r.dp}/${r.slot}`);
        if (!batches) throw new MooncakeError('INTERNAL', `no engine batches for dp ${r.dp} slot ${r.slot}`);
        await sleepUntil(performance.now() + gapMs);
        const t0 = performance.now();
        await Promise.all(batches.map((b) => b.engine.submitPrepared(b.batch)));
        const peers = new Map(batches.map((b) => [`${b.batch.segment.ip}:${b.batch.segment.rpcPort}`, b.batch.segment]));
        await Promise.all([...peers.values()].map((seg) => notifier.send(seg.ip, seg.rpcPort, notify, limits)));
        const ms = performance.now() - t0;
        for (const b of batches) {
          bytes += b.batch.bytes;
          ranges += b.batch.requests;
        }
        return ms;
      });
      return { ...t, bytes, ranges };
    } finally {
      notifier.close();
    }
  }

  /** Runs `reqs` with `concurrency` in flight, timing each with `one`. */
  private async timed(reqs: readonly Req[], concurrency: number, one: (r: Req) => Promise<number>, onRequest?: (done: number, total: number) => void): Promise<Omit<PhaseSamples, 'bytes' | 'ranges'>> {
    await this.control.call('stats'); // starts the target's meters for this phase
    const health = new HealthMeter(60_000);
    const cpu = new CpuMeter();
    const durations = new Array<number>(reqs.length);
    let next = 0;
    let done = 0;
    const t0 = performance.now();
    const worker = async (): Promise<void> => {
      while (next < reqs.length) {
        const i = next++;
        durations[i] = await one(reqs[i]);
        onRequest?.(++done, reqs.length);
      }
    };
    let h!: ReturnType<HealthMeter['stop']>;
    try {
      await Promise.all(Array.from({ length: Math.min(concurrency, reqs.length) }, worker));
    } finally {
      h = health.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpuPercent = cpu.percent();
    const target = await this.control.call<TargetPhaseStats>('stats');
    return { durations, seconds, cpuPercent, loopDelayP99Ms: h.loopDelayP99Ms, loopDelayMaxMs: h.loopDelayMaxMs, target };
  }

  /**
   * Warm-up and proof: one request per slot and dp pairing through the KV layer into cleared blocks, then
   * the pattern checked on the decode side. Also prepares the engine-only batches of the same ranges.
   */
  async warmUpAndVerify(withAnchors: boolean): Promise<{ bytes: number; mismatches: number }> {
    const spec = this.spec;
    const n = spec.slots * Math.max(spec.prefill.dpSize, spec.decode.dpSize);
    const reqs = this.requests('warm', n);
    const slots = [...Array(spec.slots).keys()];
    if (this.side === 'decode') this.group.clear(slots);
    else await this.control.call('clear', { caseId: spec.id, slots });
    const params = await this.announce(reqs);
    for (const r of reqs) {
      if (withAnchors) await this.prepareAnchors(r, params[r.k]);
      const { outcomes } = await this.kvRequest(r, params[r.k], 0);
      this.requestRanges = outcomes.reduce((a, o) => a + o.ranges, 0);
      this.requestBytes = outcomes.reduce((a, o) => a + o.bytes, 0);
      const anchor = this.anchors.get(`${r.dp}/${r.slot}`);
      if (anchor) {
        const ranges = anchor.reduce((a, b) => a + b.batch.requests, 0);
        const bytes = anchor.reduce((a, b) => a + b.batch.bytes, 0);
        if (ranges !== this.requestRanges || bytes !== this.requestBytes) {
          throw new MooncakeError('INTERNAL', `the engine-only batches (${ranges} ranges, ${bytes} bytes) differ from what the KV layer moved (${this.requestRanges}, ${this.requestBytes})`);
        }
      }
    }
    await this.settle(reqs);
    let bytes = 0;
    let mismatches = 0;
    const decodeDps = new Map<number, Set<number>>();
    for (const r of reqs) {
      const d = this.side === 'decode' ? r.dp : r.targetDp;
      if (!decodeDps.has(d)) decodeDps.set(d, new Set());
      decodeDps.get(d)!.add(r.slot);
    }
    for (const [dp, s] of decodeDps) {
      const c = this.side === 'decode' ? this.group.check(dp, [...s]) : await this.control.call<{ bytes: number; mismatches: number }>('check', { caseId: spec.id, dp, slots: [...s] });
      bytes += c.bytes;
      mismatches += c.mismatches;
    }
    if (mismatches > 0 || bytes === 0) throw new MooncakeError('PROTOCOL_ERROR', `${spec.transfer} delivered wrong bytes: ${mismatches} mismatching rows of ${bytes} bytes checked`);
    return { bytes, mismatches };
  }

  private async prepareAnchors(r: Req, params: KvTransferParamsWire): Promise<void> {
    const key = `${r.dp}/${r.slot}`;
    if (this.anchors.has(key)) return;
    const opcode = this.spec.transfer === 'pull' ? 'read' : 'write';
    const ranks = this.group.dp(r.dp);
    const blocks = this.blocks(r.slot);
    const prepare = async (layer?: number): Promise<Anchor[]> => {
      const out: Anchor[] = [];
      for (const rank of ranks) {
        const planned = opcode === 'read' ? await (rank as KvConsumer).plannedBatches(params, blocks) : await (rank as KvProducer).plannedBatches(params, blocks, layer);
        for (const b of planned) if (b.plan.lengths.length > 0) out.push({ engine: rank.engine, batch: rank.engine.prepareBatch(b.segment, opcode, b.plan.requests) });
      }
      return out;
    };
    this.anchors.set(key, await prepare());
    if (this.spec.transfer === 'layerwise') this.layerAnchors.set(key, await prepare(Math.floor(this.spec.model.layers / 2)));
  }

  /** `n` requests through the KV layer. */
  async kvPhase(phase: string, n: number, o: PhaseOptions): Promise<PhaseSamples> {
    const reqs = this.requests(phase, n);
    const params = await this.announce(reqs);
    const tails: number[] = [];
    let bytes = 0;
    let ranges = 0;
    const t = await this.timed(reqs, o.concurrency, async (r) => {
      const { ms, tail, outcomes } = await this.kvRequest(r, params[r.k], o.layerComputeMs);
      if (tail !== undefined) tails.push(tail);
      for (const x of outcomes) {
        bytes += x.bytes;
        ranges += x.ranges;
      }
      return ms;
    }, o.onRequest);
    await this.settle(reqs);
    return { ...t, bytes, ranges, ...(this.spec.transfer === 'layerwise' ? { tails } : {}) };
  }

  /** `n` requests' worth of the same ranges through the bare engine (prepared batches). `layer`: one layer's. */
  async enginePhase(n: number, o: PhaseOptions, layer = false): Promise<PhaseSamples> {
    const reqs = this.requests('engine', n);
    const table = layer ? this.layerAnchors : this.anchors;
    let bytes = 0;
    let ranges = 0;
    const t = await this.timed(reqs, o.concurrency, async (r) => {
      const batches = table.get(`${r.dp}/${r.slot}`);
      if (!batches) throw new MooncakeError('INTERNAL', `no engine batches for dp ${r.dp} slot ${r.slot}`);
      const t0 = performance.now();
      await Promise.all(batches.map((b) => b.engine.submitPrepared(b.batch)));
      const ms = performance.now() - t0;
      for (const b of batches) {
        bytes += b.batch.bytes;
        ranges += b.batch.requests;
      }
      return ms;
    }, o.onRequest);
    return { ...t, bytes, ranges };
  }

  get hasAnchors(): boolean {
    return this.anchors.size > 0;
  }
}
