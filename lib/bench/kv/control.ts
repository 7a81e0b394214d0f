/**
 * The control connection between the two processes of `bench kv` (initiator and target, on one host or
 * two): JSON lines over TCP, one request `{id, cmd, ...}` and one answer `{id, ok, result | error}` each.
 * Control traffic never runs inside a timed window (requests are held or expected a phase ahead).
 *
 * Bounded: a line longer than MAX_LINE closes the connection; one connection at a time is served.
 */
import * as net from 'node:net';
import { MooncakeError, isMooncakeError, type ErrorCode } from '../../errors';

const MAX_LINE = 64 << 20;

export type ControlHandler = (cmd: string, args: Record<string, unknown>) => Promise<unknown>;

/** Serves control requests; `close()` stops listening and drops the connection. */
export class ControlServer {
  private readonly server: net.Server;
  private socket: net.Socket | undefined;

  constructor(private readonly handler: ControlHandler) {
    this.server = net.createServer((s) => this.accept(s));
  }

  async listen(port: number, host: string): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  private accept(s: net.Socket): void {
    if (this.socket) {
      s.end(JSON.stringify({ id: 0, ok: false, error: { code: 'REJECT_HANDSHAKE', message: 'another initiator is connected to this bench target' } }) + '\n');
      return;
    }
    this.socket = s;
    s.setNoDelay(true);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      if (buf.length > MAX_LINE) {
        s.destroy();
        return;
      }
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        void this.answer(s, line);
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      if (this.socket === s) this.socket = undefined;
    });
  }

  private async answer(s: net.Socket, line: string): Promise<void> {
    let id: unknown = 0;
    try {
      const m = JSON.parse(line) as { id?: unknown; cmd?: unknown } & Record<string, unknown>;
      id = m.id;
      if (typeof m.cmd !== 'string') throw new MooncakeError('PROTOCOL_ERROR', 'control request without cmd');
      const result = await this.handler(m.cmd, m);
      if (!s.destroyed) s.write(JSON.stringify({ id, ok: true, result }) + '\n');
    } catch (err) {
      const code = isMooncakeError(err) ? err.code : 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      if (!s.destroyed) s.write(JSON.stringify({ id, ok: false, error: { code, message } }) + '\n');
    }
  }

  async close(): Promise<void> {
    this.socket?.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

/** The initiator's end: `call(cmd, args)` resolves with the target's result or rejects with its code. */
export class ControlClient {
  private nextId = 1;
  private buf = '';
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private closedError: MooncakeError | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.setNoDelay(true);
    socket.on('data', (d: string) => this.onData(d));
    socket.on('error', () => undefined);
    socket.on('close', () => this.fail(new MooncakeError('CONNECTION_LOST', 'the bench target closed the control connection')));
  }

  static async connect(host: string, port: number, timeoutMs = 10_000): Promise<ControlClient> {
    const socket = net.connect({ host, port });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        socket.destroy();
        reject(new MooncakeError('TIMEOUT', `no answer from the bench target's control port ${host}:${port} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(t);
        resolve();
      });
      socket.once('error', (e) => {
        clearTimeout(t);
        reject(new MooncakeError('CONNECT_FAILED', `cannot reach the bench target's control port ${host}:${port}: ${e.message}`, { cause: e }));
      });
    });
    return new ControlClient(socket);
  }

  private onData(d: string): void {
    this.buf += d;
    if (this.buf.length > MAX_LINE) {
      this.socket.destroy();
      return;
    }
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 1);
      let m: { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } };
      try {
        m = JSON.parse(line) as typeof m;
      } catch {
        this.fail(new MooncakeError('PROTOCOL_ERROR', 'the bench target sent a malformed control line'));
        this.socket.destroy();
        return;
      }
      const p = this.pending.get(m.id);
      if (m.id === 0 && !m.ok) this.fail(new MooncakeError((m.error?.code ?? 'PROTOCOL_ERROR') as ErrorCode, m.error?.message ?? 'refused'));
      if (!p) continue;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new MooncakeError((m.error?.code ?? 'PROTOCOL_ERROR') as ErrorCode, `bench target: ${m.error?.message ?? 'failed'}`));
    }
  }

  private fail(e: MooncakeError): void {
    this.closedError ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  call<T = unknown>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.socket.write(JSON.stringify({ ...args, id, cmd }) + '\n');
    });
  }

  close(): void {
    this.socket.end();
    this.fail(new MooncakeError('CLOSED', 'control connection closed'));
  }
}
