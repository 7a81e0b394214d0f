/**
 * `mooncake-node bench kv` flags, and the options of the programmatic API (`runKvBench`), with their
 * defaults and cross-checks in one place.
 */
import { MooncakeError } from '../../errors';
import { flagError, type FlagValues } from '../../cli/flags';
import type { KvHeadLayout } from '../../kv/layout';
import { KV_TRANSFER_MODES, type KvParallel, type KvTransferMode } from './cases';
import { KV_MODEL_NAMES, kvModel, type CustomModelSpec, type KvModel } from './models';

export type KvBenchMode = 'loopback' | 'initiator' | 'target';

export interface KvBenchOptions {
  mode: KvBenchMode;
  models: KvModel[];
  /** Prompt lengths, tokens. */
  promptTokens: number[];
  /** Tokens per KV block. */
  blockSize: number;
  prefill: KvParallel;
  decode: KvParallel;
  /** Block layout of the heads; default NHD (vLLM's), HND when the TP sizes differ for GQA. */
  headLayout?: KvHeadLayout;
  transfers: KvTransferMode[];
  blocks: 'contiguous' | 'scattered';
  /** Requests in flight. */
  concurrency: number;
  /** Requests per timed phase; default: about `phaseSeconds` worth, 5..200. */
  requests?: number;
  phaseSeconds: number;
  /** Timed rounds (KV layer and engine phases alternate); ratios are medians over rounds. */
  rounds: number;
  /** Layerwise: simulated compute per layer, ms (default: 1.5 x one layer's engine transfer, at least 1). */
  layerComputeMs?: number;
  /** Time the same ranges through the bare engine too. */
  engineAnchor: boolean;
  /** The real vllm-ascend connector's transfer path: when set up (auto), always (require), never (off). */
  realConnector: 'auto' | 'require' | 'off';
  /** Prompts longer than this skip the real connector (its peer holds another copy of the caches). */
  realMaxTokens: number;
  /** KV caches allowed per side (bytes); fewer slots than the concurrency when it is short. */
  maxMemory: number;
  metadataServer?: string;
  /** Initiator: the target's control address (host:port). */
  target?: string;
  /** Target: control port (0: any free one). */
  controlPort: number;
  /** Address the rank engines (and the target's control port) bind to and advertise. */
  host: string;
  ioThreads?: number;
  json: boolean;
  quiet: boolean;
  /** Write an SVG chart of time per request against prompt length. */
  chart?: string;
}

export const KV_BENCH_DEFAULTS = {
  promptTokens: [512, 2048, 8192],
  blockSize: 128,
  concurrency: 1,
  phaseSeconds: 1,
  rounds: 3,
  maxMemory: 6 * 2 ** 30,
} as const;

export const KV_BENCH_FLAGS = {
  mode: { type: 'string', choices: ['loopback', 'initiator', 'target'], default: 'loopback', help: 'loopback starts the target process and a metadata server itself: no set-up' },
  model: { type: 'list', default: ['llama3-8b'], help: `model presets (${KV_MODEL_NAMES.join(', ')}); several run one after another` },
  'prompt-tokens': { type: 'list', arg: 'N', default: ['512', '2k', '8k'], help: 'prompt lengths in tokens (k = 1024), e.g. 512 2k 8k 32k' },
  'block-size': { type: 'int', min: 1, max: 4096, default: 128, help: 'tokens per KV block' },
  'prefill-tp': { type: 'int', min: 1, max: 64, default: 1, help: 'prefill tensor-parallel size' },
  'decode-tp': { type: 'int', min: 1, max: 64, default: 1, help: 'decode tensor-parallel size (prefill tp must be a multiple)' },
  'prefill-dp': { type: 'int', min: 1, max: 64, default: 1, help: 'prefill data-parallel size' },
  'decode-dp': { type: 'int', min: 1, max: 64, default: 1, help: 'decode data-parallel size' },
  'head-layout': { type: 'string', choices: ['NHD', 'HND'], defaultText: 'NHD; HND when the TP sizes differ (GQA)', help: 'order inside a block' },
  transfer: { type: 'list', default: ['pull'], help: `${KV_TRANSFER_MODES.join(', ')} (decode reads; prefill writes the request; prefill writes layer by layer)` },
  blocks: { type: 'string', choices: ['contiguous', 'scattered'], default: 'contiguous', help: "a request's block ids: consecutive, or never (one range per block)" },
  concurrency: { type: 'int', min: 1, max: 256, default: 1, help: 'requests in flight' },
  requests: { type: 'int', min: 1, max: 100_000, defaultText: 'about --phase-seconds worth, 5..200', help: 'requests per timed phase' },
  'phase-seconds': { type: 'number', arg: 'S', min: 0.01, max: 3600, default: 1, help: 'target length of a timed phase (sets the default --requests)' },
  rounds: { type: 'int', min: 1, max: 100, default: 3, help: 'timed rounds; ratios are medians over them' },
  'layer-compute-ms': { type: 'number', arg: 'MS', min: 0, max: 60_000, defaultText: '1.5 x one layer transfer, >= 1', help: 'layerwise: simulated compute per layer' },
  'engine-anchor': { type: 'boolean', negatable: true, default: true, help: 'also time the same ranges through the bare engine' },
  'real-connector': { type: 'string', choices: ['auto', 'require', 'off'], default: 'auto', help: "the real vllm-ascend connector's transfer path as a baseline (auto: when scripts/setup-connectors.sh ran)" },
  'real-max-tokens': { type: 'string', arg: 'N', default: '8k', help: 'longest prompt the real connector runs (its peer holds another copy of the caches)' },
  'max-memory': { type: 'size', default: 6 * 2 ** 30, defaultText: '6G', help: 'KV caches per side, all ranks' },
  'metadata-server': { type: 'string', arg: 'URL', help: 'http://host:port/metadata (initiator and target; loopback starts one)' },
  target: { type: 'string', arg: 'HOST:PORT', help: "initiator: the target's control address" },
  'control-port': { type: 'int', min: 0, max: 65535, default: 0, help: 'target: control port (0: a free one, printed)' },
  host: { type: 'string', default: '127.0.0.1', help: 'address the ranks bind to and advertise' },
  'io-threads': { type: 'int', min: 1, max: 64, help: 'engine I/O threads per rank' },
  chart: { type: 'string', arg: 'FILE.svg', help: 'write a chart: time per request against prompt length, per model' },
  json: { type: 'boolean', help: 'one machine-readable result on stdout' },
  quiet: { type: 'boolean', help: 'no progress on stderr' },
  // A model of your own (with --model custom).
  attention: { type: 'string', choices: ['mha', 'mla'], help: 'custom model: attention' },
  layers: { type: 'int', min: 1, max: 1024, help: 'custom model: layers' },
  'kv-heads': { type: 'int', min: 1, max: 1024, help: 'custom model: KV heads (mha)' },
  'head-dim': { type: 'int', min: 1, max: 65536, help: 'custom model: head dimension (mla: latent width)' },
  'rope-dim': { type: 'int', min: 0, max: 65536, help: 'custom model: rope part next to the latent (mla)' },
  'dtype-bytes': { type: 'int', min: 1, max: 8, help: 'custom model: bytes per element (default 2)' },
  'until-stdin-closes': { type: 'boolean', hidden: true, help: 'target: also stop when stdin closes (the loopback parent sets it)' },
} as const;

export type KvBenchFlagValues = FlagValues<typeof KV_BENCH_FLAGS>;

/** "512", "2k", "32K" -> tokens. */
export function parseTokens(s: string, flag = '--prompt-tokens'): number {
  const m = /^(\d+)([kK]?)$/.exec(s.trim());
  const n = m ? Number(m[1]) * (m[2] ? 1024 : 1) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0 || n > 1 << 22) throw flagError(flag, s, 'expected a token count like 512, 2k or 32k (at most 4M)', 'bench kv');
  return n;
}

function splitList(v: readonly string[] | undefined): string[] {
  return (v ?? []).flatMap((x) => x.split(',')).map((x) => x.trim()).filter((x) => x !== '');
}

/** Options from `bench kv` flags. */
export function kvBenchOptionsFromFlags(v: KvBenchFlagValues): KvBenchOptions {
  const custom: CustomModelSpec = {
    attention: v.attention as 'mha' | 'mla' | undefined,
    layers: v.layers,
    kvHeads: v['kv-heads'],
    headDim: v['head-dim'],
    ropeDim: v['rope-dim'],
    dtypeBytes: v['dtype-bytes'],
  };
  const transfers = splitList(v.transfer).map((t) => {
    if (!(KV_TRANSFER_MODES as readonly string[]).includes(t)) throw flagError('--transfer', t, `expected ${KV_TRANSFER_MODES.join(', ')}`, 'bench kv');
    return t as KvTransferMode;
  });
  return resolveKvBenchOptions({
    mode: v.mode as KvBenchMode,
    models: splitList(v.model).map((m) => kvModel(m, custom)),
    promptTokens: splitList(v['prompt-tokens']).map((t) => parseTokens(t)),
    blockSize: v['block-size'],
    prefill: { dpSize: v['prefill-dp']!, tpSize: v['prefill-tp']! },
    decode: { dpSize: v['decode-dp']!, tpSize: v['decode-tp']! },
    headLayout: v['head-layout'] as KvHeadLayout | undefined,
    transfers,
    blocks: v.blocks as 'contiguous' | 'scattered',
    concurrency: v.concurrency,
    requests: v.requests,
    phaseSeconds: v['phase-seconds'],
    rounds: v.rounds,
    layerComputeMs: v['layer-compute-ms'],
    engineAnchor: v['engine-anchor'] !== false,
    realConnector: v['real-connector'] as 'auto' | 'require' | 'off',
    realMaxTokens: parseTokens(v['real-max-tokens']!, '--real-max-tokens'),
    maxMemory: v['max-memory'],
    metadataServer: v['metadata-server'],
    target: v.target,
    controlPort: v['control-port'],
    host: v.host,
    ioThreads: v['io-threads'],
    json: v.json === true,
    quiet: v.quiet === true,
    chart: v.chart,
  });
}

/** Fills in defaults and checks options against each other (INVALID_CONFIG). */
export function resolveKvBenchOptions(o: Partial<KvBenchOptions> & { models?: KvModel[] }): KvBenchOptions {
  const r: KvBenchOptions = {
    mode: o.mode ?? 'loopback',
    models: o.models && o.models.length > 0 ? o.models : [kvModel('llama3-8b')],
    promptTokens: o.promptTokens && o.promptTokens.length > 0 ? o.promptTokens : [...KV_BENCH_DEFAULTS.promptTokens],
    blockSize: o.blockSize ?? KV_BENCH_DEFAULTS.blockSize,
    prefill: o.prefill ?? { dpSize: 1, tpSize: 1 },
    decode: o.decode ?? { dpSize: 1, tpSize: 1 },
    headLayout: o.headLayout,
    transfers: o.transfers && o.transfers.length > 0 ? o.transfers : ['pull'],
    blocks: o.blocks ?? 'contiguous',
    concurrency: o.concurrency ?? KV_BENCH_DEFAULTS.concurrency,
    requests: o.requests,
    phaseSeconds: o.phaseSeconds ?? KV_BENCH_DEFAULTS.phaseSeconds,
    rounds: o.rounds ?? KV_BENCH_DEFAULTS.rounds,
    layerComputeMs: o.layerComputeMs,
    engineAnchor: o.engineAnchor ?? true,
    realConnector: o.realConnector ?? 'auto',
    realMaxTokens: o.realMaxTokens ?? 8192,
    maxMemory: o.maxMemory ?? KV_BENCH_DEFAULTS.maxMemory,
    metadataServer: o.metadataServer,
    target: o.target,
    controlPort: o.controlPort ?? 0,
    host: o.host ?? '127.0.0.1',
    ioThreads: o.ioThreads,
    json: o.json ?? false,
    quiet: o.quiet ?? false,
    chart: o.chart,
  };
  if (r.prefill.tpSize % r.decode.tpSize !== 0) {
    throw new MooncakeError('INVALID_CONFIG', `prefill tp ${r.prefill.tpSize} must be a multiple of decode tp ${r.decode.tpSize}`, { details: { flag: '--prefill-tp' } });
  }
  if (r.mode === 'initiator' && (r.metadataServer === undefined || r.target === undefined)) {
    throw new MooncakeError('INVALID_CONFIG', 'initiator mode needs --metadata-server and --target (the control address the target printed)');
  }
  if (r.mode === 'target' && r.metadataServer === undefined) throw new MooncakeError('INVALID_CONFIG', 'target mode needs --metadata-server');
  if (r.realConnector === 'require' && r.mode !== 'loopback') throw new MooncakeError('INVALID_CONFIG', '--real-connector require runs in loopback mode');
  return r;
}
