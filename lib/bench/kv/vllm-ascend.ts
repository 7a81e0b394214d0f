/**
 * The real connector as a baseline in the same run: vllm-ascend's released MooncakeConnector transfer
 * code with upstream's engine (the pinned wheel, TCP), driven by the connector driver of test/connectors
 * (scripts/setup-connectors.sh installs both; the driver reports its own seconds).
 *
 * - pull: vllm-ascend's decode (KVCacheRecvingThread: GET_META, the batched read, DONE) and a mooncake-node
 *   decode on the vllm-ascend side channel pull the same layout from the same mooncake-node prefill ranks.
 * - layerwise: vllm-ascend's layerwise prefill (update_decoder_info, then KVCacheSendingLayerThread's
 *   per-layer writes and DONE_SENDING) and a mooncake-node prefill (pushLayerwise, every layer ready) push
 *   the same layout into the same mooncake-node decode ranks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { MooncakeError } from '../../errors';
import type { KvTransferParamsWire } from '../../kv/params';
import { freePortRange } from '../../util/ports';
import { findUpstream } from '../../tools/upstream-peer';
import { CpuMeter, HealthMeter } from '../stats';
import { engineIdOf, initiatorSide, rankLayoutOf, slotBlocks, type KvCaseSpec } from './cases';
import type { KvBenchOptions } from './options';
import { alternate, CasePhases, type PhaseSamples } from './phases';
import { PythonPeer } from './python-peer';
import { RankGroup, totalKvHeads } from './ranks';
import { summarizePhase, type KvCaseResult, type KvRealConnectorResult } from './result';
import type { KvBenchHooks } from './run';
import type { ControlClient } from './control';
import type { TargetPhaseStats } from './target';
import { median } from '../../util/stats';

export interface RealConnectorSetup {
  python: string;
  driver: string;
  release: { version: string; path: string };
}

const SETUP = 'bash scripts/setup-upstream-peer.sh && bash scripts/setup-connectors.sh (in a checkout)';

/** Where the released connector and its driver are, or why the baseline cannot run here. */
export function realConnectorSetup(): RealConnectorSetup | { skipReason: string } {
  const up = findUpstream();
  if ('skipReason' in up) return { skipReason: `${up.skipReason}; then ${SETUP}` };
  const file = path.join(up.venv, 'connectors', 'connectors.json');
  if (!fs.existsSync(file)) return { skipReason: `the released vllm-ascend connector is not installed (${file} missing): ${SETUP}` };
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { python?: string; loader?: string; 'vllm-ascend'?: { version: string; path: string }[] };
  const release = j['vllm-ascend']?.find((r) => r.version.startsWith('0.23.') && fs.existsSync(r.path));
  const driver = j.loader ? path.join(path.dirname(j.loader), 'vllm_ascend_peer.py') : '';
  if (!release || !j.python) return { skipReason: `${file} lists no vllm-ascend 0.23 release: ${SETUP}` };
  if (!fs.existsSync(driver)) return { skipReason: `the connector driver ${driver} is missing (it ships with a checkout, not the npm package)` };
  return { python: j.python, driver, release };
}

/** Why this case has no real-connector counterpart, if it has none. */
function unsupported(spec: KvCaseSpec, o: KvBenchOptions): string | undefined {
  if (o.mode !== 'loopback') return 'runs in loopback mode only (the real peers start on this host)';
  if (spec.promptTokens > o.realMaxTokens) return `prompts above --real-max-tokens ${o.realMaxTokens} (its peer would hold another copy of the caches)`;
  if (spec.prefill.dpSize !== 1 || spec.decode.dpSize !== 1) return 'runs with dp 1 on both sides';
  if (spec.transfer === 'pull' && spec.model.attention === 'mha' && spec.prefill.tpSize !== spec.decode.tpSize) {
    return "vllm-ascend's decode reads whole remote blocks and reshapes them on the NPU when the TP sizes differ (GQA), which this host cannot run: compared at equal TP and for MLA";
  }
  if (spec.transfer === 'layerwise' && (spec.model.attention !== 'mha' || spec.prefill.tpSize !== spec.decode.tpSize)) {
    return "the driver runs vllm-ascend's layerwise prefill for MHA/GQA at equal TP";
  }
  return undefined;
}

/** Real peers, one per rank of the initiator's side, with caches of the case's layout. */
async function startPeers(setup: RealConnectorSetup, spec: KvCaseSpec, portBase: number): Promise<PythonPeer[]> {
  const side = initiatorSide(spec);
  const L = rankLayoutOf(spec, side);
  const peers: PythonPeer[] = [];
  try {
    for (let tp = 0; tp < spec[side].tpSize; tp++) {
      const p = await PythonPeer.start(setup.python, setup.driver, { VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT: '600' });
      peers.push(p);
      await p.call({ cmd: 'init', dir: setup.release.path, profile: '0.23', host: '127.0.0.1' });
      const lens = [...Array(L.tensorsPerLayer).keys()].map((k) => L.tensorBlockBytes(k));
      await p.call({ cmd: 'alloc_kv', layers: L.numLayers, per_layer: L.tensorsPerLayer, num_blocks: L.numBlocks, block_len: lens[0], block_lens: lens, fill: false }, 600_000);
      if (side === 'decode') {
        await p.call({ cmd: 'start_receiver', engine_id: 'vllm-decode', tp_rank: tp, prefill_tp: spec.prefill.tpSize, decode_tp: spec.decode.tpSize, heads: totalKvHeads(spec), head_dim: spec.model.headDim, mla: spec.model.attention === 'mla', side_channel_port: portBase, block_size: spec.blockSize });
      }
    }
  } catch (err) {
    await Promise.allSettled(peers.map((p) => p.stop()));
    throw err;
  }
  return peers;
}

/** One request through the real path: seconds as the real code measured them (max over ranks). */
async function realRequest(spec: KvCaseSpec, peers: PythonPeer[], requestId: string, params: KvTransferParamsWire, portBase: number): Promise<number> {
  if (spec.transfer === 'pull') {
    const remote = slotBlocks(spec, 'prefill', 0);
    const local = slotBlocks(spec, 'decode', 0);
    for (const p of peers) {
      await p.call({ cmd: 'pull', request_id: requestId, remote_request_id: requestId, local_block_ids: local, remote_block_ids: remote, remote_engine_id: engineIdOf(spec, 'prefill'), remote_host: '127.0.0.1', remote_port: params.remote_port, prefill_tp: spec.prefill.tpSize, remote_block_size: spec.blockSize });
    }
    let worst = 0;
    for (const p of peers) {
      const r = await p.call({ cmd: 'wait_done', request_id: requestId, timeout: 600 }, 620_000);
      const invalid = r.invalid_block_ids as number[] | undefined;
      if (r.done !== true || (invalid && invalid.length > 0) || typeof r.seconds !== 'number') throw new MooncakeError('PROTOCOL_ERROR', `the real decode did not complete ${requestId}: ${JSON.stringify(r)}`);
      worst = Math.max(worst, r.seconds);
    }
    return worst * 1000;
  }
  const answers = await Promise.all(
    peers.map((p, tp) => p.call({ cmd: 'layer_push', engine_id: 'vllm-prefill', tp_rank: tp, prefill_tp: spec.prefill.tpSize, side_channel_port: portBase, params, local_block_ids: slotBlocks(spec, 'prefill', 0) }, 620_000)),
  );
  return Math.max(...answers.map((a) => Number(a.seconds))) * 1000;
}

/** `n` requests through the real path, held or expected on the target first. */
async function realPhase(spec: KvCaseSpec, control: ControlClient, peers: PythonPeer[], phase: string, n: number, portBase: number): Promise<PhaseSamples> {
  const ids = Array.from({ length: n }, (_, k) => `${spec.id}-real-${phase}-${k}`);
  const requests = ids.map((requestId) => ({ requestId, dp: 0, slot: 0 }));
  const params = await control.call<KvTransferParamsWire[]>(spec.transfer === 'pull' ? 'hold' : 'expect', { caseId: spec.id, requests });
  await control.call('stats');
  const health = new HealthMeter(60_000);
  const cpu = new CpuMeter();
  const t0 = performance.now();
  const durations: number[] = [];
  let h!: ReturnType<HealthMeter['stop']>;
  try {
    for (let k = 0; k < n; k++) durations.push(await realRequest(spec, peers, ids[k], params[k], portBase));
  } finally {
    h = health.stop();
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpuPercent = cpu.percent();
  const target = await control.call<TargetPhaseStats>('stats');
  const settled = await control.call<{ released: Record<string, number>; received: { ok: number; failed: number } }>('settled', { caseId: spec.id, requestIds: ids, timeoutMs: 60_000 });
  const bad = Object.keys(settled.released).filter((r) => r !== 'done' && r !== 'not-selected');
  if (bad.length > 0 || settled.received.failed > 0) throw new MooncakeError('PROTOCOL_ERROR', `real-connector requests ended badly on the target: ${JSON.stringify(settled)}`);
  return { durations, seconds, cpuPercent, loopDelayP99Ms: h.loopDelayP99Ms, loopDelayMaxMs: h.loopDelayMaxMs, target, bytes: 0, ranges: 0 };
}

/**
 * Runs the real connector's path and mooncake-node's on the vllm-ascend side channel for the same case
 * (one slot, concurrency 1: per-request time), rounds alternating, and returns both with the speedup.
 */
export async function realConnectorAnchors(
  setup: RealConnectorSetup,
  base: KvCaseSpec,
  o: KvBenchOptions,
  s: { control: ControlClient; metadataServer: string; host: string },
  main: KvCaseResult,
  hooks: KvBenchHooks,
): Promise<KvRealConnectorResult> {
  const why = unsupported(base, o);
  const path_ = base.transfer === 'pull' ? 'vllm-ascend decode pull' : 'vllm-ascend layerwise prefill';
  if (why) return { path: path_, skipReason: why };
  const log = hooks.log ?? (() => undefined);
  const side = initiatorSide(base);
  const tp = Math.max(base.prefill.tpSize, base.decode.tpSize);
  const spec: KvCaseSpec = { ...base, slots: 1, sideChannel: 'vllm-ascend', kvPorts: { prefill: await freePortRange(tp), decode: await freePortRange(tp) } };
  const realPorts = await freePortRange(tp);
  log(`${base.model.name} ${base.promptTokens} tokens: the real ${path_} (vllm-ascend ${setup.release.version}) next to mooncake-node on its side channel`);
  await s.control.call('setup', { spec });
  let group: RankGroup | undefined;
  let peers: PythonPeer[] = [];
  try {
    group = await RankGroup.open(spec, side, { metadataServer: s.metadataServer, host: s.host, ioThreads: o.ioThreads });
    if (side === 'prefill') group.fill([0]);
    peers = await startPeers(setup, spec, realPorts);
    const phases = new CasePhases(spec, group, s.control);
    await phases.warmUpAndVerify(o.engineAnchor);
    await realPhase(spec, s.control, peers, 'warm', 1, realPorts);
    const n = Math.max(3, Math.min(main.kv.requests, Math.ceil((o.phaseSeconds * 1000) / Math.max(1, main.kv.p50Ms * 3))));
    const node: PhaseSamples[] = [];
    const real: PhaseSamples[] = [];
    const engine: PhaseSamples[] = [];
    for (let r = 0; r < o.rounds; r++) {
      const runNode = async () => node.push(await phases.kvPhase(`v${r}`, n, { concurrency: 1, layerComputeMs: 0 }));
      const runReal = async () => real.push(await realPhase(spec, s.control, peers, `${r}`, n, realPorts));
      // The same ranges through the bare engine: what no KV layer on this engine and link can beat.
      const runEngine = async () => {
        if (phases.hasAnchors) engine.push(await phases.enginePhase(n, { concurrency: 1 }));
      };
      await alternate(r, runNode, async () => alternate(r >> 1, runReal, runEngine));
      hooks.progress?.(`${base.model.name} ${base.promptTokens} tokens: real connector round ${r + 1}/${o.rounds}`);
    }
    const bytes = phases.requestBytes;
    const flat = (ps: PhaseSamples[]): PhaseSamples => ({ ...ps[0], durations: ps.flatMap((p) => p.durations), seconds: ps.reduce((a, p) => a + p.seconds, 0) });
    const speedup = median(real.map((rp, i) => median(rp.durations) / median(node[i].durations)));
    return {
      path: path_,
      version: setup.release.version,
      profile: '0.23',
      node: summarizePhase(flat(node), bytes),
      real: summarizePhase(flat(real), bytes),
      ...(engine.length > 0 ? { engine: summarizePhase(flat(engine), bytes), engineSpeedup: median(real.map((rp, i) => median(rp.durations) / median(engine[i].durations))) } : {}),
      speedup,
      targetMin: base.transfer === 'pull' ? 2 : undefined,
      met: base.transfer === 'pull' ? speedup >= 2 : undefined,
      note: base.transfer === 'pull'
        ? "real: vllm-ascend's KVCacheRecvingThread with upstream's engine, from its pull to its finished set (its own perf_counter, polled every 0.5 ms)"
        : "real: vllm-ascend's update_decoder_info and per-layer _transfer_kv_cache with upstream's engine, every layer ready (its own perf_counter); mooncake-node: pushLayerwise with every layer ready",
    };
  } finally {
    await Promise.allSettled(peers.map((p) => p.stop()));
    await group?.close();
    await s.control.call('teardown', { caseId: spec.id }).catch(() => undefined);
  }
}
