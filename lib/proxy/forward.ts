/**
 * Upstream requests: one attempt with connect/idle timeouts and abort, bounded retries (on connection failures
 * before any response byte, and on HTTP error answers other than 400 when asked; on another instance when there
 * is one), and bounded body reading.
 */
import * as http from 'node:http';
import type { Readable } from 'node:stream';
import { MooncakeError } from '../errors';
import type { Instance, InstancePool } from './instances';

/** Node error codes that mean "the request did not get an answer because of the connection". */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENETDOWN',
  'ETIMEDOUT',
  'EADDRNOTAVAIL',
  'EAI_AGAIN',
  'ENOTFOUND',
  'ECONNABORTED',
]);

export interface UpstreamAttempt {
  agent: http.Agent;
  origin: string;
  method: string;
  path: string;
  headers: http.OutgoingHttpHeaders;
  body?: Buffer;
  signal: AbortSignal;
  connectTimeoutMs: number;
  /** Longest silence before the response headers or between two body chunks; 0 disables. */
  idleTimeoutMs: number;
  /** Called with an error that happens after the response headers arrived (idle timeout, reset). */
  onLateError?: (error: MooncakeError) => void;
}

const originCache = new Map<string, { hostname: string; port: number }>();

/** Host and port of an 'http://host:port' origin, parsed once. */
function originParts(origin: string): { hostname: string; port: number } {
  let parts = originCache.get(origin);
  if (parts === undefined) {
    const u = new URL(origin);
    parts = { hostname: u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname, port: u.port === '' ? 80 : Number(u.port) };
    if (originCache.size > 10_000) originCache.clear();
    originCache.set(origin, parts);
  }
  return parts;
}

/** True for an error the proxy may retry on another instance: no response byte was received. */
export function isRetryable(e: unknown): boolean {
  return e instanceof MooncakeError && e.details?.retryable === true;
}

/** An upstream HTTP answer read whole: what the client gets when every attempt answered with an error. */
export interface UpstreamAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * An instance answered with an HTTP error. Retryable, as vllm-ascend's proxy does, unless the status is 400 (the
 * request itself is wrong: every instance would say so) or `retryHttpErrors` is off. The answer travels in
 * `details.answer` so that, when no attempt succeeds, the client gets the last one as it was.
 */
export function httpError(origin: string, answer: UpstreamAnswer, retryHttpErrors: boolean): MooncakeError {
  return new MooncakeError('REMOTE_REJECTED', `${origin} answered HTTP ${answer.status}`, {
    details: { origin, httpStatus: answer.status, answer, retryable: retryHttpErrors && answer.status !== 400 },
  });
}

/** The HTTP answer an error carries (see httpError), if any. */
export function answerOf(e: unknown): UpstreamAnswer | undefined {
  const a = e instanceof MooncakeError ? e.details?.answer : undefined;
  return a !== undefined && typeof a === 'object' ? (a as UpstreamAnswer) : undefined;
}

function errCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

function classify(e: unknown, origin: string, signal: AbortSignal): MooncakeError {
  if (e instanceof MooncakeError) return e;
  if (signal.aborted) {
    const reason: unknown = signal.reason;
    if (reason instanceof MooncakeError) return reason;
    return new MooncakeError('ABORT_ERR', `request to ${origin} was aborted`, { cause: e, details: { origin } });
  }
  const code = errCode(e);
  const message = e instanceof Error ? e.message : String(e);
  if (code !== undefined && CONNECTION_CODES.has(code)) {
    const kind = code === 'ECONNRESET' || code === 'EPIPE' ? 'CONNECTION_LOST' : 'CONNECT_FAILED';
    return new MooncakeError(kind, `${origin}: ${message}`, { cause: e, details: { origin, retryable: true, errno: code } });
  }
  return new MooncakeError('CONNECTION_LOST', `${origin}: ${message}`, { cause: e, details: { origin, errno: code } });
}

/**
 * Sends one request and resolves with the response once its headers arrive. Rejects with a MooncakeError:
 * CONNECT_FAILED / CONNECTION_LOST with `details.retryable` when nothing was received, TIMEOUT, or the abort
 * signal's reason (ABORT_ERR by default). After the headers, the idle timeout and the signal destroy the
 * response stream instead.
 */
export function sendUpstream(a: UpstreamAttempt): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    if (a.signal.aborted) {
      reject(classify(a.signal.reason, a.origin, a.signal));
      return;
    }
    const target = originParts(a.origin);
    const headers: http.OutgoingHttpHeaders = { ...a.headers };
    if (a.body !== undefined) headers['content-length'] = a.body.length;
    let settled = false;
    let connectTimer: NodeJS.Timeout | undefined;
    const req = http.request({ hostname: target.hostname, port: target.port, method: a.method, path: a.path, headers, agent: a.agent });
    // Abort by hand rather than with the `signal` option: same effect, a fraction of the cost per request.
    const signal = a.signal;
    const onAbort = (): void => {
      req.destroy(classify(signal.reason, a.origin, signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    req.once('close', () => signal.removeEventListener('abort', onAbort));
    req.on('socket', (socket) => {
      if (!socket.connecting) return;
      connectTimer = setTimeout(() => {
        req.destroy(
          new MooncakeError('CONNECT_FAILED', `${a.origin}: connect timed out after ${a.connectTimeoutMs} ms`, {
            details: { origin: a.origin, retryable: true },
          }),
        );
      }, a.connectTimeoutMs);
      socket.once('connect', () => clearTimeout(connectTimer));
    });
    if (a.idleTimeoutMs > 0) {
      req.setTimeout(a.idleTimeoutMs, () => {
        req.destroy(new MooncakeError('TIMEOUT', `${a.origin}: no data for ${a.idleTimeoutMs} ms`, { details: { origin: a.origin } }));
      });
    }
    req.on('response', (res) => {
      clearTimeout(connectTimer);
      settled = true;
      resolve(res);
    });
    req.on('error', (e) => {
      clearTimeout(connectTimer);
      if (settled) {
        a.onLateError?.(classify(e, a.origin, a.signal)); // the response stream reports it too
        return;
      }
      settled = true;
      const err = classify(e, a.origin, a.signal);
      // A kept-alive socket the server closed while idle: not the instance's fault, and safe to send again.
      if (req.reusedSocket && errCode(e) === 'ECONNRESET' && err.details !== undefined) err.details.staleSocket = true;
      reject(err);
    });
    req.end(a.body);
  });
}

/**
 * Pipes an upstream response into the client response, with backpressure and without touching the bytes.
 * When the upstream fails mid-body, `onUpstreamError` runs first and the client connection is then cut (the
 * client sees a truncated response, not a made-up end). When the client goes away, the upstream response is
 * destroyed. Resolves with true when the whole body was delivered.
 */
export function relay(up: http.IncomingMessage, res: http.ServerResponse, onUpstreamError: (error: Error) => void): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      resolve(ok);
    };
    up.once('error', (e) => {
      onUpstreamError(e);
      res.destroy();
      finish(false);
    });
    res.once('finish', () => finish(true));
    res.once('close', () => {
      if (res.writableFinished) return;
      up.destroy();
      finish(false);
    });
    up.pipe(res);
  });
}

/** Reads a whole stream, failing with PROTOCOL_ERROR past `limit` bytes. */
export function readBody(stream: Readable, limit: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const fail = (e: unknown): void => {
      if (done) return;
      done = true;
      // Never retryable: part of the response may have been received.
      reject(e instanceof MooncakeError ? e : new MooncakeError('CONNECTION_LOST', `${what} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e }));
    };
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        fail(new MooncakeError('PROTOCOL_ERROR', `${what} is larger than ${limit} bytes`, { details: { limit, tooLarge: true } }));
        stream.destroy();
        return;
      }
      chunks.push(chunk);
    });
    stream.on('end', () => {
      if (done) return;
      done = true;
      resolve(Buffer.concat(chunks, size));
    });
    stream.on('error', fail);
    stream.on('close', () => {
      if (!done) fail(new MooncakeError('CONNECTION_LOST', `${what} ended early`));
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export interface RetryPolicy {
  maxRetries: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface Routed<T> {
  instance: Instance;
  result: T;
  /** Attempts made, 1 when the first one worked. */
  attempts: number;
}

/**
 * Runs `attempt` on an instance chosen from `pool`, retrying on another instance after a retryable failure (at
 * most `maxRetries` times). The instance's in-flight load is acquired before the attempt; on success the caller
 * must call `instance.release(tokens)` when the request is over. When the last failure was an HTTP answer
 * (httpError), that error is thrown as it is, so the caller can hand the answer to its client.
 */
export async function withRetries<T>(
  pool: InstancePool,
  tokens: number,
  retry: RetryPolicy,
  signal: AbortSignal,
  attempt: (inst: Instance) => Promise<T>,
  onRetry?: (inst: Instance, error: MooncakeError) => void,
): Promise<Routed<T>> {
  const tried = new Set<Instance>();
  let last: MooncakeError | undefined;
  for (let n = 0; n <= retry.maxRetries; n++) {
    if (n > 0 && retry.baseDelayMs > 0) {
      await sleep(Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (n - 1)), signal);
    }
    const inst = pool.pick(tried);
    if (inst === undefined) {
      throw new MooncakeError('CONNECT_FAILED', `no ${pool.role} instance is configured`, { details: { role: pool.role, noInstance: true } });
    }
    inst.acquire(tokens);
    try {
      const result = await attempt(inst);
      pool.recordResponse(inst);
      return { instance: inst, result, attempts: n + 1 };
    } catch (e) {
      inst.release(tokens);
      const err = e instanceof MooncakeError ? e : classify(e, inst.url, signal);
      if (!isRetryable(err) || signal.aborted) throw err;
      if (err.details?.httpStatus !== undefined) tried.add(inst); // it answered: alive, but try another
      else if (err.details?.staleSocket !== true) {
        pool.recordConnectFailure(inst, err);
        tried.add(inst);
      }
      last = err;
      if (n < retry.maxRetries) onRetry?.(inst, err);
    }
  }
  if (answerOf(last) !== undefined) throw last!;
  throw new MooncakeError('CONNECT_FAILED', `every attempt to reach a ${pool.role} instance failed (${retry.maxRetries + 1} attempts): ${last?.message ?? 'unknown error'}`, {
    cause: last,
    details: { role: pool.role, attempts: retry.maxRetries + 1 },
  });
}
