/**
 * Drives test/interop/peers/te_peer.py: a real upstream Mooncake TransferEngine (PyPI wheel
 * mooncake-transfer-engine-non-cuda) in a child process, one JSON command per line.
 *
 * Every wait is bounded; every peer started here is stopped by `stopAllTePeers()` (call it from
 * afterEach/afterAll), and SIGKILLed when the test worker exits if something still slipped through.
 */
import { type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { upstreamPeer } from '../../helpers/upstream';
import { LinePeer, type PeerReply } from './line-peer';

export const TE_PEER_SCRIPT = path.join(__dirname, 'te_peer.py');

export type Reply = PeerReply;
export type Op = 'write' | 'read';
export interface NotifyMsg {
  name: string;
  msg: string;
}

const live = new Set<TePeer>();

/** Stops every peer still running (bounded; SIGKILL as the last resort). */
export async function stopAllTePeers(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

export class TePeer extends LinePeer {
  /** The segment name other engines open (set by `init`). */
  segment = '';
  rpcPort = 0;
  readonly pid: number;

  private constructor(child: ChildProcessWithoutNullStreams) {
    super(child, TE_PEER_SCRIPT);
    this.pid = child.pid ?? -1;
    live.add(this);
    void this.exit.then(() => live.delete(this));
  }

  /**
   * Starts the peer (not yet initialized). `env` is added to upstreamEnv(), e.g. `{ MC_TCP_PROTO: '1' }`;
   * `python` runs it instead of the non-cuda venv's interpreter (e.g. the npu wheel's venv).
   */
  static async start(env: Record<string, string> = {}, timeoutMs = 60_000, python?: string): Promise<TePeer> {
    const up = upstreamPeer();
    if (!python && 'skipReason' in up) throw new Error(up.skipReason);
    const interpreter = python ?? (up as { python: string }).python;
    const { peer, hello } = await LinePeer.launch((child) => new TePeer(child), interpreter, TE_PEER_SCRIPT, { env, timeoutMs });
    if (!hello.ok) {
      await peer.stop();
      throw new Error(`te_peer.py did not start: ${JSON.stringify(hello)}`);
    }
    return peer;
  }

  /** Starts and initializes a peer: P2PHANDSHAKE, or HTTP metadata at `metadataUrl` under `name`. */
  static async create(
    mode: { p2p: true } | { metadataUrl: string; name: string },
    env: Record<string, string> = {},
  ): Promise<TePeer> {
    const peer = await TePeer.start(env);
    try {
      const r = await peer.call('p2p' in mode ? { cmd: 'init', mode: 'p2p' } : { cmd: 'init', mode: 'http', name: mode.name, metadata_url: mode.metadataUrl });
      peer.segment = r.segment as string;
      peer.rpcPort = r.rpc_port as number;
      return peer;
    } catch (e) {
      await peer.stop();
      throw e;
    }
  }

  // ---- typed helpers -----------------------------------------------------------------------------

  /** allocate_managed_buffer(size) */
  async alloc(size: number): Promise<bigint> {
    return BigInt((await this.call({ cmd: 'alloc', size })).addr as string);
  }

  /** Memory the peer allocates itself (ctypes) and registers with register_memory. */
  async register(size: number): Promise<bigint> {
    return BigInt((await this.call({ cmd: 'register', size })).addr as string);
  }

  /** Fills the range with random bytes; returns the sha256 of what the buffer then holds. */
  async fill(addr: bigint, length: number): Promise<string> {
    return (await this.fillMany([[addr, length]]))[0]!;
  }

  /** `fill` for several ranges in one round trip. */
  async fillMany(ranges: [bigint, number][]): Promise<string[]> {
    return (await this.call({ cmd: 'fill', ranges: ranges.map(([a, n]) => [a.toString(), n]) })).sha256 as string[];
  }

  /** sha256 (hex) of a range, computed in the Python process. */
  async sha256(addr: bigint, length: number): Promise<string> {
    return (await this.sha256Many([[addr, length]]))[0]!;
  }

  async sha256Many(ranges: [bigint, number][]): Promise<string[]> {
    return (await this.call({ cmd: 'sha256', ranges: ranges.map(([a, n]) => [a.toString(), n]) })).sha256 as string[];
  }

  async readBytes(addr: bigint, length: number): Promise<Buffer> {
    return Buffer.from((await this.call({ cmd: 'read', addr: addr.toString(), length })).hex as string, 'hex');
  }

  async writeBytes(addr: bigint, data: Buffer): Promise<void> {
    await this.call({ cmd: 'write', addr: addr.toString(), hex: data.toString('hex') });
  }

  /** get_first_buffer_address(segment): opens the segment (parses its descriptor) on the way. */
  async firstBufferAddress(segment: string): Promise<bigint> {
    return BigInt((await this.call({ cmd: 'first_buffer', segment })).addr as string);
  }

  /** send_probe(peer): a handshake Probe to the peer's rpc port -> 0 on success. */
  async probe(peer: string): Promise<number> {
    return (await this.call({ cmd: 'probe', peer })).ret as number;
  }

  /** transfer_sync(target, local, remote, length, op, notify) -> upstream's return value (0 / -1). */
  async transfer(target: string, op: Op, local: bigint, remote: bigint, length: number, notify?: NotifyMsg): Promise<number> {
    const r = await this.call({ cmd: 'transfer', target, op, local: local.toString(), remote: remote.toString(), length, notify: notify ?? null });
    return r.ret as number;
  }

  /** batch_transfer_sync(target, locals, remotes, lengths, op, notify) -> 0 / -1. */
  async batch(target: string, op: Op, reqs: { local: bigint; remote: bigint; length: number }[], notify?: NotifyMsg): Promise<number> {
    const r = await this.call({
      cmd: 'batch',
      target,
      op,
      locals: reqs.map((q) => q.local.toString()),
      remotes: reqs.map((q) => q.remote.toString()),
      lengths: reqs.map((q) => q.length),
      notify: notify ?? null,
    });
    return r.ret as number;
  }

  /** get_notifies(): drains the peer's received notifications. */
  async notifies(): Promise<NotifyMsg[]> {
    return (await this.call({ cmd: 'notifies' })).notifies as NotifyMsg[];
  }

  /** Polls get_notifies() until `count` have arrived (bounded). */
  async waitNotifies(count: number, timeoutMs = 10_000): Promise<NotifyMsg[]> {
    const got: NotifyMsg[] = [];
    const deadline = Date.now() + timeoutMs;
    while (got.length < count) {
      got.push(...(await this.notifies()));
      if (got.length >= count) break;
      if (Date.now() > deadline) throw new Error(`only ${got.length} of ${count} notifies arrived within ${timeoutMs} ms: ${JSON.stringify(got)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return got;
  }

  // ---- lifecycle ---------------------------------------------------------------------------------

  /**
   * Asks the peer to exit (its engine then deletes its metadata entries), then closes stdin, then
   * SIGTERM, then SIGKILL; resolves once the process is gone. Always bounded.
   */
  override stop(): Promise<void> {
    return super.stop(JSON.stringify({ cmd: 'exit' }) + '\n', 5000);
  }
}
