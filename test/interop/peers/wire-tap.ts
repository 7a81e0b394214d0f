/**
 * A TCP relay in front of a data port that decodes the initiator → target stream of the Mooncake
 * TCP data protocol (24-byte headers {u64 size, u64 addr, u8 opcode, 7 pad}, WRITE bodies follow
 * their header) and records every header, so a test can see which framing an initiator really
 * used: opcode 0/1 is v1, 0x80/0x81 is v2. Bytes are forwarded untouched in both directions, with
 * half-closes passed through (a v2 rejection is "status frame, then FIN").
 */
import * as net from 'node:net';

export interface TappedHeader {
  size: bigint;
  addr: bigint;
  opcode: number;
}

interface TapConnection {
  headers: number;
  /** The target ended or closed its side. */
  targetDone: boolean;
}

export class WireTap {
  readonly headers: TappedHeader[] = [];
  private readonly conns: TapConnection[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {
    this.server = net.createServer({ allowHalfOpen: true }, (client) => this.relay(client));
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** The framings seen: 'v1' and/or 'v2'. */
  framings(): Set<'v1' | 'v2'> {
    return new Set(this.headers.map((h) => ((h.opcode & 0x80) !== 0 ? 'v2' : 'v1')));
  }

  /** Connections relayed so far. */
  get connections(): number {
    return this.conns.length;
  }

  /**
   * Resolves once the target has closed every relayed connection (bounded). When every request is
   * one the target rejects by closing (v1), the target has then read every header it ever will.
   */
  async targetClosedAll(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.conns.some((c) => !c.targetDone)) {
      if (Date.now() > deadline) throw new Error(`the target kept ${this.conns.filter((c) => !c.targetDone).length} of ${this.conns.length} connection(s) open for ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private relay(client: net.Socket): void {
    const conn: TapConnection = { headers: 0, targetDone: false };
    this.conns.push(conn);
    const upstream = net.connect({ host: this.target.host, port: this.target.port, allowHalfOpen: true });
    upstream.once('end', () => (conn.targetDone = true));
    upstream.once('close', () => (conn.targetDone = true));
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
    // Decode the request stream as it passes.
    let pending: Buffer = Buffer.alloc(0);
    let skip = 0n; // WRITE body bytes still to pass
    client.on('data', (chunk: Buffer) => {
      let data: Buffer = chunk;
      for (;;) {
        if (skip > 0n) {
          const k = BigInt(data.length) < skip ? data.length : Number(skip);
          skip -= BigInt(k);
          data = data.subarray(k);
          if (skip > 0n) return;
        }
        if (data.length === 0) return;
        pending = pending.length ? Buffer.concat([pending, data]) : data;
        data = Buffer.alloc(0);
        if (pending.length < 24) return;
        const h: TappedHeader = { size: pending.readBigUInt64LE(0), addr: pending.readBigUInt64LE(8), opcode: pending[16]! };
        this.headers.push(h);
        conn.headers++;
        data = pending.subarray(24);
        pending = Buffer.alloc(0);
        if ((h.opcode & 0x7f) === 1) skip = h.size;
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
