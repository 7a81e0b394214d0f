/**
 * Test helpers for the proxy suites. The OpenAI-compatible STAND-IN prefill/decode servers live in
 * lib/proxy/stand-ins.ts (the benchmark needs them at run time); they are re-exported here with a small HTTP
 * client, a bounded wait helper and a cleanup list so every test stops what it starts.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { createProxy, type PdProxy, type ProxyAddress, type ProxyOptions } from '../../lib/proxy';
import { startStandIn, type StandIn, type StandInOptions } from '../../lib/proxy/stand-ins';

export * from '../../lib/proxy/stand-ins';

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

export interface RequestOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: unknown;
  agent?: http.Agent | false;
  signal?: AbortSignal;
}

/** One HTTP request to 127.0.0.1; resolves with the whole response. */
export function request(base: string, path: string, opts: RequestOptions = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const payload =
      opts.body === undefined ? undefined : Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
    const headers: http.OutgoingHttpHeaders = {
      ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
      ...opts.headers,
    };
    const req = http.request(new URL(path, base), { method: opts.method ?? (payload === undefined ? 'GET' : 'POST'), headers, agent: opts.agent, signal: opts.signal }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

export function json<T = Record<string, unknown>>(r: HttpResult): T {
  return JSON.parse(r.text) as T;
}

/**
 * What the client gets for a JSON decode answer by default: decode's bytes, re-serialised with prefill's
 * `cached_tokens` in `usage.prompt_tokens_details` (0 when prefill reported none), as vllm-ascend's proxy does.
 */
export function withCachedTokens(decodeBytes: Buffer | undefined, cached = 0): Buffer {
  const answer = JSON.parse((decodeBytes ?? Buffer.from('{}')).toString('utf8')) as { usage?: { prompt_tokens_details?: Record<string, unknown> } };
  if (answer.usage !== undefined) answer.usage.prompt_tokens_details = { ...answer.usage.prompt_tokens_details, cached_tokens: cached };
  return Buffer.from(JSON.stringify(answer));
}

/** Polls `cond` every `stepMs` until it holds, at most `tries` times; throws naming `what` otherwise. */
export async function waitFor(cond: () => boolean, what: string, tries = 1000, stepMs = 10): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A port on 127.0.0.1 nothing listens on (connections to it are refused). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const a = srv.address();
  const port = typeof a === 'object' && a !== null ? a.port : 0;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Collects what a test started so afterEach stops it, last started first. */
export class Harness {
  private readonly closers: (() => Promise<void>)[] = [];

  async standIn(opts: StandInOptions): Promise<StandIn> {
    const s = await startStandIn(opts);
    this.closers.push(() => s.close());
    return s;
  }

  async proxy(opts: ProxyOptions): Promise<{ proxy: PdProxy; addr: ProxyAddress }> {
    const proxy = createProxy({ port: 0, ...opts, shutdownGraceMs: opts.shutdownGraceMs ?? 0 });
    this.closers.push(() => proxy.close());
    const addr = await proxy.listen();
    return { proxy, addr };
  }

  defer(fn: () => Promise<void> | void): void {
    this.closers.push(async () => fn());
  }

  async closeAll(): Promise<void> {
    while (this.closers.length > 0) {
      const c = this.closers.pop();
      if (c !== undefined) await c();
    }
  }
}
