/**
 * Drives test/connectors/peers/vllm_peer.py: a real vLLM MooncakeConnector rank (the released module,
 * installed by scripts/setup-connectors.sh) with the real upstream engine, one JSON command per line.
 * `vllmSetup()` says where the release is, or why the suites must skip.
 *
 * Every peer started here is stopped by `stopAllVllmPeers()` (afterEach/afterAll), and SIGKILLed when the test
 * worker exits if something slipped through.
 */
import { type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { upstreamPeer } from '../../helpers/upstream';
import { LinePeer } from '../../interop/peers/line-peer';

export const VLLM_PEER_SCRIPT = path.join(__dirname, 'vllm_peer.py');
const SETUP = 'bash scripts/setup-upstream-peer.sh && bash scripts/setup-connectors.sh';

export interface VllmSetup {
  python: string;
  version: string;
  path: string;
}

/** The installed vLLM release, or `{ skipReason }`. */
export function vllmSetup(): VllmSetup | { skipReason: string } {
  const up = upstreamPeer();
  if ('skipReason' in up) return { skipReason: `${up.skipReason}; then run ${SETUP}` };
  const file = path.join(path.dirname(path.dirname(up.python)), 'connectors', 'connectors.json');
  if (!fs.existsSync(file)) return { skipReason: `the released connector files are not installed (${file} missing): run ${SETUP}` };
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { python: string; vllm?: { version: string; path: string }[] };
  const r = j.vllm?.find((x) => fs.existsSync(x.path));
  if (!r) return { skipReason: `${file} lists no vLLM release: run ${SETUP}` };
  return { python: j.python, version: r.version, path: r.path };
}

/** Logs why a suite skips (loudly) and returns whether it can run. */
export function vllmOrSkip(suite: string): VllmSetup | undefined {
  const s = vllmSetup();
  if ('skipReason' in s) {
    console.warn(`\n*** SKIPPED ${suite}: ${s.skipReason} ***\n`);
    return undefined;
  }
  return s;
}

const live = new Set<VllmPeer>();

export async function stopAllVllmPeers(): Promise<void> {
  await Promise.all([...live].map((p) => p.stopped()));
}

export interface VllmRankSpec {
  role: 'kv_producer' | 'kv_consumer';
  engineId: string;
  tpRank: number;
  tpSize: number;
  totalHeads: number;
  blockSize: number;
  bootstrapPort: number;
}

export class VllmPeer extends LinePeer {
  rpcPort = 0;
  /** Per layer: the base address of its page tensor. */
  tensors: bigint[] = [];
  page = 0;
  bootstrap: string | undefined;

  private constructor(child: ChildProcessWithoutNullStreams) {
    super(child, VLLM_PEER_SCRIPT);
    live.add(this);
    void this.exit.then(() => live.delete(this));
  }

  /** Starts a rank process and loads the connector (`env`: VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT, ...). */
  static async create(setup: VllmSetup, env: Record<string, string> = {}): Promise<VllmPeer> {
    const { peer, hello } = await LinePeer.launch((child) => new VllmPeer(child), setup.python, VLLM_PEER_SCRIPT, { env, timeoutMs: 60_000 });
    try {
      if (!hello.ok) throw new Error(`vllm_peer.py did not start: ${JSON.stringify(hello)}`);
      await peer.call({ cmd: 'init', dir: setup.path, host: '127.0.0.1' });
      return peer;
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  /** Allocates `layers` LBHNC pages of `numBlocks` × heads × blockSize × content bytes (random unless fill false). */
  async allocKv(layers: number, numBlocks: number, heads: number, blockSize: number, content: number, fill = true): Promise<void> {
    const r = await this.call({ cmd: 'alloc_kv', layers, num_blocks: numBlocks, heads, block_size: blockSize, content, fill });
    this.tensors = (r.tensors as string[]).map((a) => BigInt(a));
    this.page = r.page as number;
  }

  /** Creates the real MooncakeConnectorWorker and registers the caches (a producer also its side channel). */
  async start(s: VllmRankSpec): Promise<void> {
    const r = await this.call({ cmd: 'start', role: s.role, engine_id: s.engineId, tp_rank: s.tpRank, tp_size: s.tpSize, total_heads: s.totalHeads, block_size: s.blockSize, bootstrap_port: s.bootstrapPort });
    this.rpcPort = r.rpc_port as number;
    this.bootstrap = (r.bootstrap as string | null) ?? undefined;
  }

  /** Block `b` of every layer, keyed `layer/block`. */
  async readBlocks(blocks: number[]): Promise<Map<string, Buffer>> {
    const keys: string[] = [];
    const ranges: [string, number][] = [];
    this.tensors.forEach((base, l) => blocks.forEach((b) => {
      keys.push(`${l}/${b}`);
      ranges.push([(base + BigInt(b * this.page)).toString(), this.page]);
    }));
    const r = await this.call({ cmd: 'read', ranges });
    return new Map(keys.map((k, i) => [k, Buffer.from((r.hex as string[])[i], 'hex')]));
  }

  stopped(): Promise<void> {
    return this.stop(JSON.stringify({ cmd: 'exit' }) + '\n');
  }
}
