import { MooncakeError } from '../errors';

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
  /** Engine knobs. */
  ioThreads?: number;
  connectionsPerPeer?: number;
  /** Use engine-allocated shared memory on both sides (enables the same-host fast path). */
  managed: boolean;
  /** Allow the same-host memcpy path when both ends are on one host (default true). */
  sameHost: boolean;
  reportUnit: 'GB' | 'GiB';
  quiet: boolean;
}

export const BENCH_USAGE = `Usage: mooncake-node bench [options]

  --mode loopback|initiator|target   loopback (default) starts a target process and an embedded
                                     metadata server itself: no set-up needed
  --operation write|read             (default write)
  --block-size N                     bytes per request, K/M/G suffixes allowed (default 64K)
  --batch-size N                     requests per batch (default 128)
  --threads N | --concurrency N      batches in flight (default 4)
  --duration S                       seconds (default 10; loopback 5)
  --buffer-size N                    registered buffer on each side (default: enough for one round)
  --metadata-server URL              http://host:port/metadata or P2PHANDSHAKE
  --segment-id NAME                  target's segment name (initiator mode)
  --local-server-name NAME           this engine's name
  --protocol tcp                     built-in transport
  --io-threads N, --connections N    engine threads, connections per peer
  --managed                          engine-allocated shared memory on both sides
  --no-same-host                     never use the same-host memcpy path
  --compare                          also run upstream's transfer_engine_bench (from the project's
                                     upstream venv) and a raw TCP socket reference; print ratios
  --sweep FILE.svg                   compare over block sizes 4K..4M and write a chart
  --json                             machine-readable result on stdout
  --report-unit GB|GiB`;

export function parseSize(v: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?$/.exec(v.trim());
  if (!m) throw new MooncakeError('INVALID_CONFIG', `${flag} must be a size like 4096, 64K or 1M, got '${v}'`);
  const unit = (m[2] ?? '').toUpperCase()[0];
  const mult = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1;
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n) || n <= 0) throw new MooncakeError('INVALID_CONFIG', `${flag} must be positive, got '${v}'`);
  return n;
}

function parseInt10(v: string, flag: string, min = 1, max = 1 << 30): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new MooncakeError('INVALID_CONFIG', `${flag} must be an integer in [${min}, ${max}], got '${v}'`);
  return n;
}

export function parseBenchArgs(argv: string[]): BenchOptions | 'help' {
  const o: BenchOptions = {
    mode: 'loopback', protocol: 'tcp', operation: 'write', blockSize: 65536, batchSize: 128, concurrency: 4,
    durationSec: NaN, bufferSize: 0, json: false, compare: false, managed: false, sameHost: true, reportUnit: 'GB', quiet: false,
  };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value: string | undefined;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    arg = arg.replace(/_/g, '-'); // accept upstream's --block_size spelling
    const next = () => {
      if (value !== undefined) return value;
      const v = argv[++i];
      if (v === undefined) throw new MooncakeError('INVALID_CONFIG', `${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '-h': case '--help': return 'help';
      case '--mode': {
        const m = next();
        if (m !== 'initiator' && m !== 'target' && m !== 'loopback') throw new MooncakeError('INVALID_CONFIG', `--mode must be loopback, initiator or target, got '${m}'`);
        o.mode = m;
        break;
      }
      case '--protocol': {
        const p = next();
        if (p !== 'tcp') throw new MooncakeError('NOT_SUPPORTED_TRANSPORT', `the built-in backend benchmarks --protocol tcp, got '${p}'`);
        break;
      }
      case '--operation': {
        const p = next();
        if (p !== 'read' && p !== 'write') throw new MooncakeError('INVALID_CONFIG', `--operation must be read or write, got '${p}'`);
        o.operation = p;
        break;
      }
      case '--metadata-server': o.metadataServer = next(); break;
      case '--block-size': o.blockSize = parseSize(next(), arg); break;
      case '--batch-size': o.batchSize = parseInt10(next(), arg, 1, 1 << 16); break;
      case '--threads': case '--concurrency': o.concurrency = parseInt10(next(), arg, 1, 1024); break;
      case '--duration': {
        const d = Number(next());
        if (!(d > 0 && d <= 86400)) throw new MooncakeError('INVALID_CONFIG', `--duration must be seconds in (0, 86400]`);
        o.durationSec = d;
        break;
      }
      case '--buffer-size': o.bufferSize = parseSize(next(), arg); break;
      case '--segment-id': o.segmentId = next(); break;
      case '--local-server-name': o.localServerName = next(); break;
      case '--io-threads': o.ioThreads = parseInt10(next(), arg, 1, 64); break;
      case '--connections': o.connectionsPerPeer = parseInt10(next(), arg, 1, 64); break;
      case '--managed': o.managed = true; break;
      case '--no-same-host': o.sameHost = false; break;
      case '--json': o.json = true; break;
      case '--quiet': o.quiet = true; break;
      case '--compare': o.compare = true; break;
      case '--sweep': o.sweep = next(); o.compare = true; break;
      case '--report-unit': {
        const u = next();
        if (u !== 'GB' && u !== 'GiB') throw new MooncakeError('INVALID_CONFIG', `--report-unit must be GB or GiB`);
        o.reportUnit = u;
        break;
      }
      default:
        throw new MooncakeError('INVALID_CONFIG', `unknown option '${argv[i]}'\n\n${BENCH_USAGE}`);
    }
  }
  if (Number.isNaN(o.durationSec)) o.durationSec = o.mode === 'loopback' ? 5 : 10;
  const round = o.blockSize * o.batchSize * o.concurrency;
  if (o.bufferSize === 0) o.bufferSize = Math.max(round, 64 * 1024 * 1024);
  if (o.bufferSize < round) throw new MooncakeError('INVALID_CONFIG', `--buffer-size must hold block-size x batch-size x concurrency = ${round} bytes`);
  if (o.mode === 'initiator' && (!o.metadataServer || !o.segmentId)) throw new MooncakeError('INVALID_CONFIG', 'initiator mode needs --metadata-server and --segment-id');
  if (o.mode === 'target' && !o.metadataServer) throw new MooncakeError('INVALID_CONFIG', 'target mode needs --metadata-server');
  return o;
}
