/**
 * Drives test/connectors/peers/vllm_ascend_peer.py: a real vllm-ascend MooncakeConnector rank (the released
 * module of one profile, installed by scripts/setup-connectors.sh) with the real upstream engine, one JSON
 * command per line. `connectorSetup()` says where the releases are, or why the suites must skip.
 *
 * Every peer started here is stopped by `stopAllAscendPeers()` (afterEach/afterAll), and SIGKILLed when the
 * test worker exits if something slipped through.
 */
import { type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot, upstreamPeer } from '../../helpers/upstream';
import { LinePeer, type PeerReply } from '../../interop/peers/line-peer';

export const ASCEND_PEER_SCRIPT = path.join(__dirname, 'vllm_ascend_peer.py');
export const SETUP_CONNECTORS = 'bash scripts/setup-upstream-peer.sh && bash scripts/setup-connectors.sh';
export type Profile = '0.18' | '0.23';
export const PROFILES: Profile[] = ['0.18', '0.23'];

interface Release {
  version: string;
  sha256: string;
  path: string;
}

export interface ConnectorSetup {
  python: string;
  releases: Record<Profile, Release>;
}

/** The installed vllm-ascend releases by profile, or `{ skipReason }`. */
export function connectorSetup(): ConnectorSetup | { skipReason: string } {
  const up = upstreamPeer();
  if ('skipReason' in up) return { skipReason: `${up.skipReason}; then run ${SETUP_CONNECTORS}` };
  const file = path.join(path.dirname(path.dirname(up.python)), 'connectors', 'connectors.json');
  if (!fs.existsSync(file)) return { skipReason: `the released connector files are not installed (${file} missing): run ${SETUP_CONNECTORS}` };
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { python: string; 'vllm-ascend'?: Release[] };
  const rel = (prefix: string): Release | undefined => j['vllm-ascend']?.find((r) => r.version.startsWith(prefix) && fs.existsSync(r.path));
  const r18 = rel('0.18.');
  const r23 = rel('0.23.');
  if (!r18 || !r23) return { skipReason: `${file} lacks vllm-ascend 0.18 or 0.23: run ${SETUP_CONNECTORS}` };
  return { python: j.python, releases: { '0.18': r18, '0.23': r23 } };
}

/** Logs why a suite skips (loudly, as the interop suites do) and returns whether it can run. */
export function connectorsOrSkip(suite: string): ConnectorSetup | undefined {
  const s = connectorSetup();
  if ('skipReason' in s) {
    console.warn(`\n*** SKIPPED ${suite}: ${s.skipReason} ***\n`);
    return undefined;
  }
  return s;
}

const live = new Set<AscendPeer>();

export async function stopAllAscendPeers(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

export class AscendPeer extends LinePeer {
  rpcPort = 0;
  profile: Profile = '0.23';

  private constructor(child: ChildProcessWithoutNullStreams) {
    super(child, ASCEND_PEER_SCRIPT);
    live.add(this);
    void this.exit.then(() => live.delete(this));
  }

  /** Starts a peer of `profile` and initializes its engine (P2PHANDSHAKE on 127.0.0.1). */
  static async create(setup: ConnectorSetup, profile: Profile, env: Record<string, string> = {}): Promise<AscendPeer> {
    const { peer, hello } = await LinePeer.launch((child) => new AscendPeer(child), setup.python, ASCEND_PEER_SCRIPT, { env, timeoutMs: 60_000 });
    try {
      if (!hello.ok) throw new Error(`vllm_ascend_peer.py did not start: ${JSON.stringify(hello)}`);
      const r = await peer.call({ cmd: 'init', dir: setup.releases[profile].path, profile, host: '127.0.0.1' });
      peer.rpcPort = r.rpc_port as number;
      peer.profile = profile;
      return peer;
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  /**
   * Allocates and registers `layers` × `perLayer` tensors of `numBlocks` blocks (random bytes); `blockLen`
   * per cache of a layer when they differ (MLA: nope, rope).
   */
  async allocKv(layers: number, perLayer: number, numBlocks: number, blockLen: number | number[], fill = true): Promise<bigint[][]> {
    const lens = typeof blockLen === 'number' ? [...Array(perLayer).keys()].map(() => blockLen) : blockLen;
    const r = await this.call({ cmd: 'alloc_kv', layers, per_layer: perLayer, num_blocks: numBlocks, block_len: lens[0], block_lens: lens, fill });
    return (r.tensors as string[][]).map((l) => l.map((a) => BigInt(a)));
  }

  /** The bytes at each [address, length]. */
  async readRanges(ranges: [bigint, number][]): Promise<Buffer[]> {
    const r = await this.call({ cmd: 'read', ranges: ranges.map(([a, n]) => [a.toString(), n]) });
    return (r.hex as string[]).map((h) => Buffer.from(h, 'hex'));
  }

  /** Blocks `blocks` of every (layer, cache) tensor, keyed `layer/cache/block` (cache 0 = K or nope, 1 = V or rope). */
  async readBlocks(tensors: bigint[][], blocks: number[], blockLen: number | number[]): Promise<Map<string, Buffer>> {
    const keys: string[] = [];
    const ranges: [bigint, number][] = [];
    tensors.forEach((layer, l) => layer.forEach((base, k) => blocks.forEach((b) => {
      const len = typeof blockLen === 'number' ? blockLen : blockLen[k];
      keys.push(`${l}/${k}/${b}`);
      ranges.push([base + BigInt(b * len), len]);
    })));
    const data = await this.readRanges(ranges);
    return new Map(keys.map((key, i) => [key, data[i]]));
  }

  stopped(): Promise<void> {
    return this.stop(JSON.stringify({ cmd: 'exit' }) + '\n');
  }
}

export type { PeerReply };
export { repoRoot };
