/**
 * The socket pair of vLLM's MooncakeConnector side channel, where one request gets a stream of answers:
 *
 * - `StreamRouter`: the prefill's ROUTER, bound on a free port. DEALER peers send bare one-frame payloads and
 *   get bare one-frame answers (no empty delimiter frame, unlike REQ), as many as the prefill sends, whenever
 *   it sends them. Unroutable answers (the decode is gone) fail instead of vanishing (ROUTER_MANDATORY).
 * - `dealerExchange`: one decode request: a DEALER connects, sends one frame and reads answers until the
 *   handler says the last one came; bounded by a deadline and a signal, and failed at once when the
 *   connection to the prefill drops (its answer can no longer arrive: a ROUTER drops answers for a peer it
 *   no longer knows) or never comes up.
 */
import { MooncakeError } from '../../errors';
import { nextRequest } from './sockets';
import { zmq, zmqAddress, type ZmqSocket } from './wire';

interface EventfulSocket extends ZmqSocket {
  readonly events: { on(type: string, listener: (e: unknown) => void): unknown };
  readonly lastEndpoint: string | null;
}

export interface StreamRouterOptions {
  /** Largest request accepted (default 16 MiB: a transfer request lists every layer's region). */
  maxMessageBytes?: number;
  /** An answer that cannot be queued within this long fails (default 3000 ms): a peer going away never wedges sends. */
  sendTimeoutMs?: number;
  onError?: (err: unknown) => void;
}

export class StreamRouter {
  private closed = false;
  private sending: Promise<unknown> = Promise.resolve();
  private readonly loop: Promise<void>;

  private constructor(private readonly sock: EventfulSocket, readonly port: number, onMessage: (identity: Buffer, payload: Buffer) => void, private readonly options: StreamRouterOptions) {
    this.loop = this.serve(onMessage);
  }

  /** Binds on `host` (port 0: a free port). CONNECT_FAILED when it cannot. */
  static async bind(host: string, port: number, onMessage: (identity: Buffer, payload: Buffer) => void, options: StreamRouterOptions = {}): Promise<StreamRouter> {
    const sock = new (zmq().Router)({ linger: 0, mandatory: true, sendTimeout: options.sendTimeoutMs ?? 3000, maxMessageSize: options.maxMessageBytes ?? 16 << 20 }) as EventfulSocket;
    try {
      await sock.bind(port === 0 ? `tcp://${host.includes(':') ? `[${host}]` : host}:*` : zmqAddress(host, port));
    } catch (err) {
      sock.close();
      throw new MooncakeError('CONNECT_FAILED', `cannot bind the side channel on ${host}:${port}: ${(err as Error).message}`, { cause: err, details: { host, port } });
    }
    const bound = Number(/:(\d+)$/.exec(sock.lastEndpoint ?? '')?.[1] ?? port);
    return new StreamRouter(sock, bound, onMessage, options);
  }

  private async serve(onMessage: (identity: Buffer, payload: Buffer) => void): Promise<void> {
    for (;;) {
      const request = await nextRequest(this.sock, () => this.closed, this.options.onError);
      if (!request) return;
      try {
        onMessage(request.identity, request.body);
      } catch (err) {
        this.options.onError?.(err);
      }
    }
  }

  /** Sends one answer to `identity`; resolves false when it could not (the peer is gone, or closed). */
  send(identity: Buffer, payload: Buffer): Promise<boolean> {
    const next = this.sending.then(async () => {
      if (this.closed) return false;
      try {
        await this.sock.send([identity, payload]);
        return true;
      } catch {
        return false;
      }
    });
    this.sending = next;
    return next;
  }

  /** Stops serving. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.sending.catch(() => undefined);
    this.closed = true;
    this.sock.close();
    await this.loop.catch(() => undefined);
  }
}

export interface DealerExchangeOptions {
  /** Give up (TIMEOUT) at this performance.now() time. */
  deadline: number;
  signal?: AbortSignal;
  /** Fail (CONNECT_FAILED) when the connection is not up after this long (default 5000 ms). */
  connectTimeoutMs?: number;
  maxMessageBytes?: number;
}

/**
 * Sends `payload` to the ROUTER at `host:port` and hands every answer to `onAnswer` until it returns true.
 * Rejects with TIMEOUT, CONNECT_FAILED (never connected), CONNECTION_LOST (the connection dropped), ABORT_ERR
 * or whatever `onAnswer` throws.
 */
export async function dealerExchange(host: string, port: number, payload: Buffer, onAnswer: (answer: Buffer) => boolean, o: DealerExchangeOptions): Promise<void> {
  const address = zmqAddress(host, port);
  const sock = new (zmq().Dealer)({ linger: 0, maxMessageSize: o.maxMessageBytes ?? 16 << 20 }) as EventfulSocket;
  let failure: MooncakeError | undefined;
  let connected = false;
  const fail = (e: MooncakeError): void => {
    if (failure) return;
    failure = e;
    sock.close();
  };
  sock.events.on('connect', () => (connected = true));
  sock.events.on('disconnect', () => fail(new MooncakeError('CONNECTION_LOST', `the connection to ${address} dropped before its answer`, { details: { address } })));
  const connectTimer = setTimeout(() => {
    if (!connected) fail(new MooncakeError('CONNECT_FAILED', `no connection to ${address} within ${o.connectTimeoutMs ?? 5000} ms`, { details: { address } }));
  }, o.connectTimeoutMs ?? 5000);
  const deadlineTimer = setTimeout(() => fail(new MooncakeError('TIMEOUT', `no final answer from ${address} in time`, { details: { address } })), Math.max(1, o.deadline - performance.now()));
  const onAbort = (): void => fail(new MooncakeError('ABORT_ERR', `the exchange with ${address} was aborted`));
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (o.signal?.aborted) onAbort();
    if (failure) throw failure;
    sock.connect(address);
    await sock.send(payload);
    for (;;) {
      const frames = await sock.receive();
      const answer = frames.length === 1 ? frames[0] : Buffer.concat(frames);
      if (onAnswer(answer)) return;
    }
  } catch (err) {
    throw failure ?? err;
  } finally {
    clearTimeout(connectTimer);
    clearTimeout(deadlineTimer);
    o.signal?.removeEventListener('abort', onAbort);
    if (!sock.closed) sock.close();
  }
}
