/**
 * A TCP relay between an engine and a peer's data port that can cut a connection at an exact byte:
 * `arm({ dir, after, how })` makes the next connection that carries traffic forward `after` more bytes
 * in direction `dir` ('up' = towards the peer, 'down' = back to the engine) and then close (FIN),
 * reset (RST) or stall (stop forwarding both ways, sockets left open) -- a peer killed in the header,
 * mid-payload or before the ack, or a link that went dark.
 */
import * as net from 'node:net';

export type CutHow = 'close' | 'reset' | 'stall';
export interface Cut {
  dir: 'up' | 'down';
  after: number;
  how: CutHow;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  up: number;
  down: number;
  base?: { up: number; down: number };
  stalled: boolean;
  /** Cut: nothing more is forwarded either way (the close or reset follows on the next tick). */
  cut: boolean;
  dead: boolean;
}

export class Relay {
  private server: net.Server | undefined;
  private readonly pairs = new Set<Pair>();
  private armed: Cut | undefined;
  private victim: Pair | undefined;
  /** Cuts performed. */
  cuts = 0;
  port = 0;

  constructor(private readonly upstreamPort: number, private readonly upstreamHost = '127.0.0.1') {}

  async listen(): Promise<number> {
    this.server = net.createServer((c) => this.onConnection(c));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Cut the next connection that carries traffic, after `after` more bytes in `dir`. */
  arm(cut: Cut): void {
    this.armed = cut;
    this.victim = undefined;
    for (const p of this.pairs) p.base = undefined;
  }

  /** True once the armed cut happened. */
  get fired(): boolean {
    return this.armed === undefined;
  }

  disarm(): void {
    this.armed = undefined;
    this.victim = undefined;
  }

  /** Drops every stalled connection (the dark link's sockets). */
  dropStalled(): void {
    for (const p of this.pairs) if (p.stalled) this.kill(p, 'reset');
  }

  get connections(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    for (const p of this.pairs) this.kill(p, 'reset');
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private kill(p: Pair, how: 'close' | 'reset'): void {
    if (p.dead) return;
    p.dead = true;
    this.pairs.delete(p);
    for (const s of [p.client, p.upstream]) {
      if (how === 'reset') s.resetAndDestroy();
      else s.end(() => s.destroy());
    }
  }

  private onConnection(client: net.Socket): void {
    const upstream = net.connect(this.upstreamPort, this.upstreamHost);
    const p: Pair = { client, upstream, up: 0, down: 0, stalled: false, cut: false, dead: false };
    this.pairs.add(p);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const forward = (from: net.Socket, to: net.Socket, dir: 'up' | 'down') => {
      from.on('data', (d: Buffer) => {
        if (p.dead || p.stalled || p.cut) return;
        let chunk = d;
        const cut = this.armed;
        if (cut && (this.victim === undefined || this.victim === p)) {
          this.victim = p;
          p.base ??= { up: p.up, down: p.down };
          if (cut.dir === dir) {
            const sent = dir === 'up' ? p.up - p.base.up : p.down - p.base.down;
            const allowed = cut.after - sent;
            if (chunk.length >= allowed) {
              const head = chunk.subarray(0, Math.max(0, allowed));
              if (head.length) to.write(head);
              if (dir === 'up') p.up += head.length;
              else p.down += head.length;
              this.armed = undefined;
              this.victim = undefined;
              this.cuts++;
              if (cut.how === 'stall') p.stalled = true;
              else {
                p.cut = true;
                setImmediate(() => this.kill(p, cut.how as 'close' | 'reset'));
              }
              return;
            }
          }
        }
        to.write(chunk);
        if (dir === 'up') p.up += chunk.length;
        else p.down += chunk.length;
      });
    };
    forward(client, upstream, 'up');
    forward(upstream, client, 'down');
    const gone = () => {
      // A stalled pair keeps the engine's side open (a dark link) even if the peer gave up.
      if (p.stalled) {
        if (!p.client.destroyed && p.client.readyState !== 'open') this.kill(p, 'reset');
        return;
      }
      this.kill(p, 'close');
    };
    for (const s of [client, upstream]) {
      s.on('error', () => undefined);
      s.on('end', gone);
      s.on('close', gone);
    }
  }
}
