/**
 * `runKvBench`: the KV benchmark as a function (the CLI's `bench kv` prints what it returns). For every
 * case (model x prompt length x transfer mode) the initiator and the target build their ranks, prove the
 * case moves the right bytes, then time rounds of requests through the KV layer, each next to the same
 * ranges through the bare engine; the real vllm-ascend connector's path joins where it is set up.
 */
import { MooncakeError } from '../../errors';
import { MetadataServer } from '../../metadata/server';
import { spawnBenchChild, type BenchChild } from '../loopback';
import { blocksPerRequest, initiatorSide, slotsFor, type KvCaseSpec, type KvTransferMode } from './cases';
import { ControlClient } from './control';
import { resolveKvBenchOptions, type KvBenchOptions } from './options';
import { alternate, CasePhases, type PhaseSamples } from './phases';
import { RankGroup } from './ranks';
import { summarizePhase, type KvCaseResult, type KvBenchResult, type KvPhaseStats } from './result';
import { realConnectorAnchors, realConnectorSetup } from './vllm-ascend';
import type { KvModel } from './models';
import { median } from '../../util/stats';

export interface KvBenchHooks {
  signal?: AbortSignal;
  /** Log lines (phases starting, anchors skipped). */
  log?: (line: string) => void;
  /** Live progress (one line, overwritten). */
  progress?: (text: string) => void;
}

function merge(phases: PhaseSamples[]): PhaseSamples {
  const w = (f: (p: PhaseSamples) => number) => phases.reduce((a, p) => a + f(p) * p.seconds, 0) / Math.max(1e-9, phases.reduce((a, p) => a + p.seconds, 0));
  return {
    durations: phases.flatMap((p) => p.durations),
    tails: phases.some((p) => p.tails) ? phases.flatMap((p) => p.tails ?? []) : undefined,
    bytes: phases.reduce((a, p) => a + p.bytes, 0),
    ranges: phases.reduce((a, p) => a + p.ranges, 0),
    seconds: phases.reduce((a, p) => a + p.seconds, 0),
    cpuPercent: w((p) => p.cpuPercent),
    loopDelayP99Ms: Math.max(...phases.map((p) => p.loopDelayP99Ms)),
    loopDelayMaxMs: Math.max(...phases.map((p) => p.loopDelayMaxMs)),
    target: phases[0]?.target
      ? {
          cpuPercent: w((p) => p.target?.cpuPercent ?? 0),
          loopDelayP99Ms: Math.max(...phases.map((p) => p.target?.loopDelayP99Ms ?? 0)),
          loopDelayMaxMs: Math.max(...phases.map((p) => p.target?.loopDelayMaxMs ?? 0)),
        }
      : undefined,
  };
}

/** The cases a run covers, in order: per model, per transfer mode, prompt lengths ascending. */
export function kvCases(o: KvBenchOptions): Omit<KvCaseSpec, 'slots' | 'id'>[] {
  const out: Omit<KvCaseSpec, 'slots' | 'id'>[] = [];
  for (const model of o.models) {
    for (const transfer of o.transfers) {
      for (const promptTokens of [...o.promptTokens].sort((a, b) => a - b)) {
        const unequal = o.prefill.tpSize !== o.decode.tpSize && model.attention === 'mha';
        out.push({
          model,
          promptTokens,
          blockSize: o.blockSize,
          prefill: o.prefill,
          decode: o.decode,
          headLayout: o.headLayout ?? (unequal ? 'HND' : 'NHD'),
          transfer,
          blocks: o.blocks,
          sideChannel: 'mooncake-node',
        });
      }
    }
  }
  return out;
}

interface Session {
  control: ControlClient;
  metadataServer: string;
  host: string;
  close(): Promise<void>;
}

/** Loopback: an embedded metadata server and a target child process; initiator: the given ones. */
async function openSession(o: KvBenchOptions, signal: AbortSignal | undefined): Promise<Session> {
  if (o.mode === 'initiator') {
    const m = /^(.*):(\d+)$/.exec(o.target!);
    if (!m) throw new MooncakeError('INVALID_CONFIG', `--target must be host:port, got ${o.target}`);
    const control = await ControlClient.connect(m[1].replace(/^\[|\]$/g, ''), Number(m[2]));
    return { control, metadataServer: o.metadataServer!, host: o.host, close: async () => control.close() };
  }
  let meta: MetadataServer | undefined;
  let child: BenchChild<{ ready?: boolean; control?: string }> | undefined;
  try {
    let url = o.metadataServer;
    if (url === undefined) {
      meta = new MetadataServer({ logger: null });
      url = (await meta.listen(0, '127.0.0.1')).url;
    }
    const args = ['bench', 'kv', '--mode', 'target', '--metadata-server', url, '--host', o.host, '--until-stdin-closes', '--json'];
    if (o.ioThreads) args.push('--io-threads', String(o.ioThreads));
    child = await spawnBenchChild(args, signal);
    const addr = child.ready.control;
    const m = typeof addr === 'string' ? /^(.*):(\d+)$/.exec(addr) : null;
    if (child.ready.ready !== true || !m) throw new MooncakeError('PROTOCOL_ERROR', 'the bench kv target announced no control address');
    const control = await ControlClient.connect(m[1], Number(m[2]));
    const c = child;
    const server = meta;
    return {
      control,
      metadataServer: url,
      host: o.host,
      close: async () => {
        control.close();
        await c.stop();
        await server?.close();
      },
    };
  } catch (err) {
    await child?.stop();
    await meta?.close();
    throw err;
  }
}

export async function runKvBench(options: Partial<KvBenchOptions> & { models?: KvModel[] } = {}, hooks: KvBenchHooks = {}): Promise<KvBenchResult> {
  const o = resolveKvBenchOptions(options);
  if (o.mode === 'target') throw new MooncakeError('INVALID_CONFIG', 'runKvBench runs the initiator (loopback or initiator mode); a target is `mooncake-node bench kv --mode target`');
  const log = hooks.log ?? (() => undefined);
  const real = o.realConnector === 'off' ? { skipReason: 'off (--real-connector off)' } : realConnectorSetup();
  if (o.realConnector === 'require' && 'skipReason' in real) throw new MooncakeError('LIBRARY_NOT_FOUND', `--real-connector require: ${real.skipReason}`);
  if ('skipReason' in real && o.realConnector === 'auto') log(`real vllm-ascend connector baseline skipped: ${real.skipReason}`);
  const session = await openSession(o, hooks.signal);
  const results: KvCaseResult[] = [];
  try {
    let n = 0;
    for (const c of kvCases(o)) {
      hooks.signal?.throwIfAborted();
      const spec: KvCaseSpec = { ...c, id: `c${n++}`, slots: slotsFor(c, o.concurrency, o.maxMemory) };
      const result = await runCase(spec, o, session, hooks);
      if (!('skipReason' in real) && (spec.transfer === 'pull' || spec.transfer === 'layerwise')) {
        result.realConnector = await realConnectorAnchors(real, { ...spec, id: `${spec.id}v` }, o, session, result, hooks);
      }
      results.push(result);
    }
  } finally {
    await session.close();
  }
  return { options: { ...o, models: o.models.map((m) => m.name) as unknown as KvModel[] }, machine: machineInfo(), cases: results };
}

async function runCase(spec: KvCaseSpec, o: KvBenchOptions, s: Session, hooks: KvBenchHooks): Promise<KvCaseResult> {
  const log = hooks.log ?? (() => undefined);
  const name = `${spec.model.name} ${spec.promptTokens} tokens ${spec.transfer}`;
  log(`${name}: setting up (${spec.slots} slot${spec.slots === 1 ? '' : 's'}, ${blocksPerRequest(spec)} blocks per request)`);
  await s.control.call('setup', { spec });
  let group: RankGroup | undefined;
  try {
    group = await RankGroup.open(spec, initiatorSide(spec), { metadataServer: s.metadataServer, host: s.host, ioThreads: o.ioThreads });
    if (initiatorSide(spec) === 'prefill') group.fill([...Array(spec.slots).keys()]);
    const phases = new CasePhases(spec, group, s.control);
    const verified = await phases.warmUpAndVerify(o.engineAnchor);
    const concurrency = o.concurrency;
    const progress = (what: string) => (done: number, total: number) => hooks.progress?.(`${name}: ${what} ${done}/${total}`);
    // One layer through the bare engine, for layerwise: the yardstick of its tail, and its compute time.
    let oneLayer: PhaseSamples | undefined;
    let computeMs = o.layerComputeMs;
    const probe = await phases.kvPhase('probe', Math.max(2, concurrency), { concurrency, layerComputeMs: 0 });
    const perRequestMs = median(probe.durations);
    const n = o.requests ?? Math.max(5, 2 * concurrency, Math.min(200, Math.ceil((o.phaseSeconds * 1000 * concurrency) / Math.max(0.01, perRequestMs))));
    if (spec.transfer === 'layerwise' && phases.hasAnchors) {
      oneLayer = await phases.enginePhase(n, { concurrency: 1, onRequest: progress('one layer, engine') }, true);
      computeMs ??= Math.max(1, Math.ceil(1.5 * median(oneLayer.durations) * 10) / 10);
    }
    computeMs ??= 1;
    // What a tail cannot avoid: one layer and a completion message through the bare engine, after the same idle.
    const floor = oneLayer ? await phases.layerFloorPhase(n, computeMs) : undefined;
    const kv: PhaseSamples[] = [];
    const engine: PhaseSamples[] = [];
    for (let r = 0; r < o.rounds; r++) {
      hooks.signal?.throwIfAborted();
      const runKv = async () => kv.push(await phases.kvPhase(`r${r}`, n, { concurrency, layerComputeMs: computeMs, onRequest: progress(`round ${r + 1}/${o.rounds} kv`) }));
      const runEngine = async () => {
        if (phases.hasAnchors) engine.push(await phases.enginePhase(n, { concurrency, onRequest: progress(`round ${r + 1}/${o.rounds} engine`) }));
      };
      await alternate(r, runKv, runEngine);
    }
    return assemble(spec, o, phases, verified, kv, engine, oneLayer, computeMs, floor);
  } finally {
    await group?.close();
    await s.control.call('teardown', { caseId: spec.id }).catch(() => undefined);
  }
}

function assemble(spec: KvCaseSpec, o: KvBenchOptions, phases: CasePhases, verified: { bytes: number; mismatches: number }, kv: PhaseSamples[], engine: PhaseSamples[], oneLayer: PhaseSamples | undefined, computeMs: number, floor?: PhaseSamples): KvCaseResult {
  const bytes = phases.requestBytes;
  const kvStats: KvPhaseStats = summarizePhase(merge(kv), bytes);
  const engineStats = engine.length > 0 ? summarizePhase(merge(engine), bytes) : undefined;
  const rounds = kv.map((k, i) => {
    const kvP50 = median(k.durations);
    const engineP50 = engine[i] ? median(engine[i].durations) : undefined;
    return { kvP50Ms: kvP50, engineP50Ms: engineP50, ratio: engineP50 ? kvP50 / engineP50 : undefined };
  });
  const result: KvCaseResult = {
    case: {
      id: spec.id,
      model: spec.model.name,
      description: spec.model.description,
      attention: spec.model.attention,
      promptTokens: spec.promptTokens,
      blockSize: spec.blockSize,
      blocksPerRequest: blocksPerRequest(spec),
      prefill: spec.prefill,
      decode: spec.decode,
      headLayout: spec.headLayout,
      transfer: spec.transfer,
      blocks: spec.blocks,
      concurrency: o.concurrency,
      slots: spec.slots,
    },
    bytesPerRequest: bytes,
    rangesPerRequest: phases.requestRanges,
    verified,
    kv: kvStats,
    ...(engineStats ? { engine: engineStats } : {}),
    rounds,
  };
  if (spec.transfer !== 'layerwise' && engineStats) {
    const ratio = median(rounds.map((r) => r.ratio!));
    result.overhead = { ratio, targetMax: 1.1, met: ratio <= 1.1 };
  }
  if (spec.transfer === 'layerwise') {
    const tails = merge(kv).tails ?? [];
    const sorted = [...tails].sort((a, b) => a - b);
    const oneLayerP50 = oneLayer ? median(oneLayer.durations) : undefined;
    const tailP50 = median(sorted);
    result.layerwise = {
      computeMs,
      computeTotalMs: computeMs * spec.model.layers,
      oneLayerEngineP50Ms: oneLayerP50,
      ...(floor ? { oneLayerNotifyP50Ms: median(floor.durations) } : {}),
      tailP50Ms: tailP50,
      tailP99Ms: sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))],
      ...(oneLayerP50 ? { tailRatio: tailP50 / oneLayerP50, met: tailP50 <= oneLayerP50 } : {}),
    };
  }
  return result;
}

function machineInfo(): Record<string, unknown> {
  const os = require('node:os') as typeof import('node:os');
  return { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, kernel: os.release(), loadavg: os.loadavg() };
}

export type { KvTransferMode };
