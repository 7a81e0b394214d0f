/**
 * Drives test/interop/peers/te_peer.py: a real upstream Mooncake TransferEngine (PyPI wheel
 * mooncake-transfer-engine-non-cuda) in a child process, one JSON command per line.
 *
 * Every wait is bounded; every peer started here is stopped by `stopAllTePeers()` (call it from
 * afterEach/afterAll), and SIGKILLed when the test worker exits if something still slipped through.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { upstreamEnv, upstreamPeer } from '../../helpers/upstream';

export const TE_PEER_SCRIPT = path.join(__dirname, 'te_peer.py');

export type Reply = { ok: boolean; error?: string; [k: string]: unknown };
export type Op = 'write' | 'read';
export interface NotifyMsg {
  name: string;
  msg: string;
}

const live = new Set<TePeer>();
process.once('exit', () => {
  for (const p of live) p.kill();
});

/** Stops every peer still running (bounded; SIGKILL as the last resort). */
export async function stopAllTePeers(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

export class TePeer {
  /** The segment name other engines open (set by `init`). */
  segment = '';
  rpcPort = 0;
  readonly pid: number;
  readonly exit: Promise<number | null>;
  private buf = '';
  private readonly lines: string[] = [];
  private waiter: ((line: string | null) => void) | undefined;
  private errText = '';
  private exited = false;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    this.pid = child.pid ?? -1;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (!line.startsWith('@@')) {
          this.log(line + '\n');
          continue;
        }
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = undefined;
          w(line.slice(2));
        } else this.lines.push(line.slice(2));
      }
    });
    child.stderr.on('data', (d: string) => this.log(d));
    child.stdin.on('error', () => {});
    this.exit = new Promise((resolve) => {
      child.on('exit', (code) => {
        live.delete(this);
        this.exited = true;
        const w = this.waiter;
        this.waiter = undefined;
        w?.(null);
        resolve(code);
      });
    });
  }

  /** Starts the peer (not yet initialized). `env` is added to upstreamEnv(), e.g. `{ MC_TCP_PROTO: '1' }`. */
  static async start(env: Record<string, string> = {}, timeoutMs = 60_000): Promise<TePeer> {
    const up = upstreamPeer();
    if ('skipReason' in up) throw new Error(up.skipReason);
    const child = spawn(up.python, [TE_PEER_SCRIPT], { env: upstreamEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    const peer = new TePeer(child);
    live.add(peer);
    try {
      const hello = await peer.read(timeoutMs);
      if (!hello.ok) throw new Error(`te_peer.py did not start: ${JSON.stringify(hello)}`);
      return peer;
    } catch (e) {
      await peer.stop();
      throw e;
    }
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

  /** The peer's log output so far (tail). */
  get output(): string {
    return this.errText;
  }

  private log(s: string): void {
    this.errText += s;
    if (this.errText.length > 200_000) this.errText = this.errText.slice(-100_000);
  }

  private read(timeoutMs: number): Promise<Reply> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(JSON.parse(queued) as Reply);
    if (this.exited) return Promise.reject(new Error(`te_peer.py exited; output tail:\n${this.errText.slice(-3000)}`));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`te_peer.py did not answer within ${timeoutMs} ms; output tail:\n${this.errText.slice(-3000)}`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(t);
        if (line === null) reject(new Error(`te_peer.py exited; output tail:\n${this.errText.slice(-3000)}`));
        else resolve(JSON.parse(line) as Reply);
      };
    });
  }

  /** Sends one command and returns its answer, ok or not. Commands are serialized. */
  send(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<Reply> {
    const run = async (): Promise<Reply> => {
      if (this.exited) throw new Error(`te_peer.py has exited; output tail:\n${this.errText.slice(-3000)}`);
      this.child.stdin.write(JSON.stringify(cmd) + '\n');
      return this.read(timeoutMs);
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Sends one command; throws unless the answer is ok. */
  async call(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<Reply> {
    const r = await this.send(cmd, timeoutMs);
    if (!r.ok) throw new Error(`te_peer.py ${String(cmd.cmd)} failed: ${JSON.stringify(r)}\noutput tail:\n${this.errText.slice(-3000)}`);
    return r;
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
  async stop(): Promise<void> {
    if (this.exited) return;
    const waitExit = (ms: number): Promise<boolean> => Promise.race([this.exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
    this.child.stdin.end(JSON.stringify({ cmd: 'exit' }) + '\n');
    if (await waitExit(5000)) return;
    this.child.kill('SIGTERM');
    if (await waitExit(3000)) return;
    this.child.kill('SIGKILL');
    await waitExit(5000);
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
