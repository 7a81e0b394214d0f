/**
 * `mooncake-node bench` flags: ours, and upstream transfer_engine_bench's spellings and units where they
 * differ (`--block_size`, `--threads`, `--report_unit Gb`, `--report_precision`, `--device_name`, ...), so
 * a command line written for upstream's bench runs here.
 */
import { constants as bufferConstants } from 'node:buffer';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MooncakeError } from '../errors';
import { flagError, parseFlags, type FlagValues } from '../cli/flags';
import { REPORT_UNITS, type ReportUnit } from './report';

export type BenchMode = 'initiator' | 'target' | 'loopback';

export interface BenchOptions {
  mode: BenchMode;
  protocol: 'tcp';
  /** Metadata connection string; loopback starts an embedded server when absent. */
  metadataServer?: string;
  operation: 'read' | 'write';
  blockSize: number;
  batchSize: number;
  /** Batches kept in flight (upstream: one per thread). */
  concurrency: number;
  durationSec: number;
  bufferSize: number;
  /** Target's segment name (initiator mode). */
  segmentId?: string;
  localServerName?: string;
  json: boolean;
  /** Also run upstream's transfer_engine_bench and the raw TCP reference, and print ratios. */
  compare: boolean;
  /** Run the comparison over several block sizes and write an SVG chart. */
  sweep?: string;
  /** Compare runs per block size; medians (and min-max in the chart) when more than one. */
  repeat: number;
  /** Engine knobs. */
  ioThreads?: number;
  connectionsPerPeer?: number;
  /** Peers with their own metrics counters; 0 turns per-peer metrics off (to measure their cost). */
  metricsMaxPeers?: number;
  /** Use engine-allocated shared memory on both sides (enables the same-host fast path). */
  managed: boolean;
  /** Allow the same-host memcpy path when both ends are on one host (default true). */
  sameHost: boolean;
  /** Unit of rates in reports (upstream's set: GB = 1e9 bytes, GiB, Gb = 1e9 bits, MB, MiB, Mb, KB, KiB, Kb). */
  reportUnit: ReportUnit;
  /** Digits after the decimal point in upstream's `Test completed` line (upstream: 2). */
  reportPrecision: number;
  quiet: boolean;
}

export const BENCH_FLAGS = {
  mode: { type: 'string', choices: ['loopback', 'initiator', 'target'], default: 'loopback', help: 'loopback starts a target process and an embedded metadata server itself: no set-up needed' },
  operation: { type: 'string', choices: ['write', 'read'], default: 'write', help: 'transfer direction (upstream defaults to read)' },
  'block-size': { type: 'size', default: 65536, defaultText: '64K', max: 1 << 30, help: 'bytes per request; K/M/G suffixes allowed' },
  'batch-size': { type: 'int', min: 1, max: 1 << 16, default: 128, help: 'requests per batch' },
  concurrency: { type: 'int', aliases: ['threads'], min: 1, max: 1024, default: 4, help: 'batches in flight (upstream: one per thread)' },
  duration: { type: 'number', arg: 'S', min: 0.001, max: 86400, defaultText: '10; loopback 5', help: 'seconds to run' },
  'buffer-size': { type: 'size', defaultText: 'enough for one round, at least 64M', help: 'registered buffer on each side' },
  'metadata-server': { type: 'string', arg: 'URL', help: 'http://host:port/metadata, etcd://..., redis://... or P2PHANDSHAKE' },
  'segment-id': { type: 'string', arg: 'NAME', help: "the target's segment name (initiator mode)" },
  'local-server-name': { type: 'string', arg: 'NAME', help: "this engine's name" },
  protocol: { type: 'string', default: 'tcp', help: 'transport: the built-in backend benchmarks tcp' },
  'device-name': { type: 'string', arg: 'NAME', help: 'RDMA device (upstream); tcp does not use it, as upstream ignores it for tcp' },
  'io-threads': { type: 'int', min: 1, max: 64, help: 'engine I/O threads' },
  connections: { type: 'int', min: 1, max: 64, help: 'connections per peer' },
  'metrics-max-peers': { type: 'int', min: 0, max: 65536, help: 'peers with their own metrics counters on both sides; 0 = per-peer metrics off (default 64)' },
  managed: { type: 'boolean', help: 'engine-allocated shared memory on both sides (same-host memcpy path)' },
  'same-host': { type: 'boolean', negatable: true, default: true, help: 'never use the same-host memcpy path' },
  compare: { type: 'boolean', help: "also run upstream's transfer_engine_bench and a raw TCP reference, and print ratios (set-up: mooncake-node setup-upstream)" },
  sweep: { type: 'string', arg: 'FILE.svg', help: 'compare over block sizes 4K..4M and write a chart' },
  repeat: { type: 'int', min: 1, max: 100, default: 1, help: '--compare/--sweep: runs per block size; reports medians (the chart min-max bars)' },
  json: { type: 'boolean', help: 'one machine-readable result on stdout' },
  quiet: { type: 'boolean', help: 'no progress or banner on stderr' },
  'report-unit': { type: 'string', choices: Object.keys(REPORT_UNITS), default: 'GB', help: 'rate unit: GB = 1e9 bytes, GiB, Gb = 1e9 bits, MB, MiB, Mb, KB, KiB, Kb (as upstream)' },
  'report-precision': { type: 'int', min: 0, max: 12, default: 2, help: "digits in upstream's 'Test completed' line" },
  backend: { type: 'string', choices: ['classic', 'tent'], default: 'classic', help: "upstream engine generation; mooncake-node speaks classic's protocol", hidden: true },
  'auto-discovery': { type: 'boolean', help: 'upstream topology discovery (RDMA); tcp does not use it', hidden: true },
  'nic-priority-matrix': { type: 'string', help: 'upstream NIC priorities (RDMA); tcp does not use it', hidden: true },
} as const;

export type BenchFlagValues = FlagValues<typeof BENCH_FLAGS>;

/** Applies defaults that depend on other flags and checks flags against each other. */
export function benchOptionsFromFlags(v: BenchFlagValues): BenchOptions {
  const mode = v.mode as BenchMode;
  if (v.protocol !== 'tcp') {
    throw new MooncakeError('NOT_SUPPORTED_TRANSPORT', `--protocol=${JSON.stringify(v.protocol)}: the built-in backend benchmarks tcp`, { details: { flag: '--protocol', value: v.protocol } });
  }
  if (v.backend === 'tent') {
    throw new MooncakeError('NOT_SUPPORTED_TRANSPORT', '--backend="tent": TENT peers speak another protocol; mooncake-node speaks the classic engine\'s', { details: { flag: '--backend', value: 'tent' } });
  }
  const o: BenchOptions = {
    mode,
    protocol: 'tcp',
    metadataServer: v['metadata-server'],
    operation: v.operation as 'read' | 'write',
    blockSize: v['block-size']!,
    batchSize: v['batch-size']!,
    concurrency: v.concurrency!,
    durationSec: v.duration ?? (mode === 'loopback' ? 5 : 10),
    bufferSize: v['buffer-size'] ?? 0,
    segmentId: v['segment-id'],
    localServerName: v['local-server-name'],
    json: v.json === true,
    compare: v.compare === true || v.sweep !== undefined,
    sweep: v.sweep,
    repeat: v.repeat!,
    ioThreads: v['io-threads'],
    connectionsPerPeer: v.connections,
    metricsMaxPeers: v['metrics-max-peers'],
    managed: v.managed === true,
    sameHost: v['same-host'] !== false,
    reportUnit: v['report-unit'] as ReportUnit,
    reportPrecision: v['report-precision']!,
    quiet: v.quiet === true,
  };
  const round = o.blockSize * o.batchSize * o.concurrency;
  if (o.bufferSize === 0) o.bufferSize = Math.max(round, 64 * 1024 * 1024);
  if (o.bufferSize < round) throw flagError('--buffer-size', o.bufferSize, `must hold block-size x batch-size x concurrency = ${round} bytes`);
  if (!o.managed && o.bufferSize > bufferConstants.MAX_LENGTH) {
    throw flagError('--buffer-size', o.bufferSize, `larger than the biggest Buffer this Node can allocate (${bufferConstants.MAX_LENGTH} bytes); use --managed for engine-allocated memory`);
  }
  if (o.mode === 'initiator' && (o.metadataServer === undefined || o.segmentId === undefined)) {
    throw new MooncakeError('INVALID_CONFIG', 'initiator mode needs --metadata-server and --segment-id');
  }
  if (o.mode === 'target' && o.metadataServer === undefined) throw new MooncakeError('INVALID_CONFIG', 'target mode needs --metadata-server');
  if (o.compare && o.mode !== 'loopback') throw new MooncakeError('INVALID_CONFIG', '--compare and --sweep run in loopback mode');
  if (o.sweep !== undefined) {
    // Found out now, not after minutes of measuring.
    const dir = path.dirname(path.resolve(o.sweep));
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch {
      throw flagError('--sweep', o.sweep, `cannot write into ${dir}`);
    }
  }
  return o;
}

/** Parses bench flags (as `mooncake-node bench` would) into options. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions {
  return benchOptionsFromFlags(parseFlags(BENCH_FLAGS, argv, { command: 'bench' }).values);
}
