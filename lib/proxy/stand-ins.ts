/**
 * STAND-INS, not inference servers: tiny in-process OpenAI-compatible HTTP servers that play a vLLM prefill or
 * decode instance for the proxy's tests and benchmark. They generate deterministic text, answer prefill requests
 * with `kv_transfer_params` the way vLLM's Mooncake connector does, report `cached_tokens` when asked, serve
 * `/reset_prefix_cache`, play a layerwise decode (POST their params to the proxy's metaserver, then wait for
 * its answer before generating), record every request and the exact bytes of every response, and misbehave on
 * demand (error status, hang, drop the connection, stall mid-stream, stream a large body, give up with
 * `stop_reason: "recomputed"`).
 */
import * as http from 'node:http';
import type { Role } from './options';
import { isJsonObject, type JsonObject } from './rewrite';
import { Recorder, sleep, type StandInRequest } from './stand-in-recorder';

export type { StandInRequest } from './stand-in-recorder';


export type StandInBehavior =
  /** Answer normally. */
  | { kind: 'normal' }
  /** Answer with this status and body instead. */
  | { kind: 'status'; status: number; body: string | JsonObject; contentType?: string }
  /** Never answer (until the client goes away or the stand-in closes). */
  | { kind: 'hang' }
  /** Destroy the connection without answering. */
  | { kind: 'destroy' }
  /** Wait for `until`, then answer normally. */
  | { kind: 'gate'; until: Promise<void> }
  /** Send the headers and `events` SSE events of a stream, then go silent. */
  | { kind: 'stall'; events: number }
  /** Stream `totalBytes` of text/plain in `chunkBytes` pieces, honouring backpressure. */
  | { kind: 'bulk'; totalBytes: number; chunkBytes?: number }
  /** Generate `after` tokens, then give up as a preempted vllm-ascend decode does: `stop_reason: "recomputed"`. */
  | { kind: 'recompute'; after: number };

export interface StandInOptions {
  role: Role;
  /** Name used in ids and as `remote_engine_id` (default `<role>-<port>`). */
  name?: string;
  /** Model id (default 'stand-in-model'). */
  model?: string;
  /** Port on 127.0.0.1 (default 0, a free one). */
  port?: number;
  /** Tokens generated when the request sets neither max_tokens nor max_completion_tokens (default 16). */
  defaultMaxTokens?: number;
  /** Wait between two SSE events (default 0: the next one is written on the next event-loop turn). */
  chunkDelayMs?: number;
  /** Chooses how to answer each completion request (default: normally). */
  behavior?: (req: StandInRequest) => StandInBehavior | undefined;
  /** Keep requests in `requests` and hash responses (default true; the benchmark turns it off). */
  record?: boolean;
  /** Prefill: the `usage.prompt_tokens_details.cached_tokens` it reports (default: no prompt_tokens_details). */
  cachedTokens?: number;
  /** What POST /reset_prefix_cache answers (default 200). */
  resetStatus?: number;
  /**
   * Write each SSE event in two pieces cut in the middle, so chunk boundaries fall inside events and UTF-8
   * characters (default true; the benchmark writes one chunk per event, as vLLM does).
   */
  splitWrites?: boolean;
}

export interface StandIn {
  readonly role: Role;
  readonly name: string;
  readonly port: number;
  /** 'http://127.0.0.1:<port>' */
  readonly url: string;
  /** Completion requests received, in arrival order. */
  readonly requests: StandInRequest[];
  /** GET /health requests received. */
  healthChecks: number;
  /** POST /reset_prefix_cache requests received: their query strings ('' when none) and headers. */
  readonly resets: { query: string; headers: http.IncomingHttpHeaders }[];
  /** Layerwise decode: what each POST to the metaserver sent and got back. */
  readonly metaserverPosts: { params: JsonObject; status: number; answer: string }[];
  /** What GET /health answers: 200 when true, 503 when false. */
  healthy: boolean;
  behavior: ((req: StandInRequest) => StandInBehavior | undefined) | undefined;
  /** Requests whose response is still being produced. */
  inFlight(): number;
  /** Closes the server and every connection. Idempotent. */
  close(): Promise<void>;
}

/** The deterministic text of token `i`; it mixes 1-, 2-, 3- and 4-byte UTF-8 so chunk splits cut characters. */
export function standInToken(i: number): string {
  const words = [' héllo', ' wörld🙂', ' ✓', ' tok' + i];
  return words[i % words.length];
}

function maxTokensOf(body: JsonObject | undefined, fallback: number): number {
  const v = body?.max_completion_tokens ?? body?.max_tokens;
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? Math.min(v, 100_000) : fallback;
}

function promptTokensOf(body: JsonObject | undefined): number {
  if (body === undefined) return 0;
  const text = typeof body.prompt === 'string' ? body.prompt : JSON.stringify(body.prompt ?? body.messages ?? '');
  return Math.max(1, Math.ceil(Buffer.byteLength(text) / 4));
}

/** POSTs JSON to `url` (the proxy's metaserver); resolves with the status and body (status 0 when unreachable). */
function postMetaserver(url: string, params: JsonObject): Promise<{ params: JsonObject; status: number; answer: string }> {
  return new Promise((resolve) => {
    const body = Buffer.from(JSON.stringify(params));
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': body.length }, agent: false }, (res) => {
      let answer = '';
      res.on('data', (d: Buffer) => (answer += d.toString()));
      res.on('end', () => resolve({ params, status: res.statusCode ?? 0, answer }));
      res.on('error', () => resolve({ params, status: 0, answer }));
    });
    req.on('error', (e) => resolve({ params, status: 0, answer: e.message }));
    req.end(body);
  });
}

/** Starts a stand-in prefill or decode server on 127.0.0.1. */
export async function startStandIn(options: StandInOptions): Promise<StandIn> {
  const role = options.role;
  const model = options.model ?? 'stand-in-model';
  const defaultMaxTokens = options.defaultMaxTokens ?? 16;
  const chunkDelayMs = options.chunkDelayMs ?? 0;
  const record = options.record ?? true;
  const splitWrites = options.splitWrites ?? true;
  let seen = 0;
  const requests: StandInRequest[] = [];
  let active = 0;
  let port = 0;
  let name = options.name ?? '';

  const write = async (res: http.ServerResponse, rec: StandInRequest, recorder: Recorder, data: Buffer): Promise<boolean> => {
    if (res.destroyed) return false;
    recorder.add(data);
    if (!res.write(data)) {
      rec.blockedOnDrain = true;
      const ok = await new Promise<boolean>((resolve) => {
        const onDrain = (): void => {
          res.off('close', onClose);
          resolve(true);
        };
        const onClose = (): void => {
          res.off('drain', onDrain);
          resolve(false);
        };
        res.once('drain', onDrain);
        res.once('close', onClose);
      });
      rec.blockedOnDrain = false;
      return ok;
    }
    return true;
  };

  const completion = async (req: http.IncomingMessage, res: http.ServerResponse, rec: StandInRequest, recorder: Recorder, path: string): Promise<void> => {
    const behavior = standIn.behavior?.(rec) ?? { kind: 'normal' };
    const chat = path === '/v1/chat/completions';
    const body = rec.body;
    const rid = rec.requestId ?? `anon-${seen}`;
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${name}-${rid}`;
    const send = (status: number, payload: string | Buffer, contentType = 'application/json'): void => {
      const buf = typeof payload === 'string' ? Buffer.from(payload) : payload;
      rec.status = status;
      recorder.add(buf);
      res.writeHead(status, { 'content-type': contentType, 'content-length': buf.length });
      res.end(buf, () => recorder.finish());
    };

    switch (behavior.kind) {
      case 'destroy':
        req.socket.destroy();
        return;
      case 'hang':
        return;
      case 'status':
        send(behavior.status, typeof behavior.body === 'string' ? behavior.body : JSON.stringify(behavior.body), behavior.contentType);
        return;
      case 'gate':
        await behavior.until;
        if (res.destroyed) return;
        break;
      case 'bulk': {
        rec.status = 200;
        res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
        const size = behavior.chunkBytes ?? 64 * 1024;
        let left = behavior.totalBytes;
        let seq = 0;
        while (left > 0) {
          const n = Math.min(size, left);
          const chunk = Buffer.alloc(n, 97 + (seq++ % 26));
          if (!(await write(res, rec, recorder, chunk))) return;
          left -= n;
        }
        res.end(() => recorder.finish());
        return;
      }
      default:
        break;
    }

    const kvIn = isJsonObject(body?.kv_transfer_params) ? body.kv_transfer_params : undefined;
    // A layerwise decode tells the proxy's metaserver where its KV goes, and waits for the prefill it triggers.
    if (role === 'decode' && kvIn?.do_remote_prefill === true && typeof kvIn.metaserver === 'string') {
      const children = Array.isArray(body?.prompt) && typeof body.prompt[0] !== 'number' ? body.prompt.length : 1;
      const answers = await Promise.all(
        Array.from({ length: children }, (_, i) => postMetaserver(kvIn.metaserver as string, { request_id: chat ? `chatcmpl-${rid}` : `cmpl-${rid}-${i}`, do_remote_prefill: false, do_remote_decode: true, remote_host: '127.0.0.1', remote_port: port, remote_tp_size: 1, remote_cached_tokens: 0 })),
      );
      standIn.metaserverPosts.push(...answers);
      // Without its KV a real decode would wait for ever: so does this one, until the proxy gives up on it.
      if (answers.some((a) => a.status !== 200) || res.destroyed) return;
    }
    const tokens = role === 'prefill' && body?.max_tokens === 1 ? 1 : behavior.kind === 'recompute' ? behavior.after + 1 : maxTokensOf(body, defaultMaxTokens);
    const promptTokens = promptTokensOf(body);
    const usage: JsonObject = { prompt_tokens: promptTokens, completion_tokens: tokens, total_tokens: promptTokens + tokens };
    if (role === 'prefill' && options.cachedTokens !== undefined) usage.prompt_tokens_details = { cached_tokens: options.cachedTokens };
    // The last token of a "recomputed" answer is where decode gave up: it carries stop_reason "recomputed".
    const finish = (i: number): JsonObject => (behavior.kind === 'recompute' && i === tokens - 1 ? { finish_reason: 'stop', stop_reason: 'recomputed' } : { finish_reason: 'length' });
    // What vLLM's Mooncake connector returns from a prefill asked for a remote decode.
    const kvOut =
      role === 'prefill' && kvIn?.do_remote_decode === true
        ? {
            do_remote_prefill: true,
            do_remote_decode: false,
            remote_block_ids: Array.from({ length: Math.max(1, Math.ceil(promptTokens / 16)) }, (_, k) => k),
            remote_engine_id: name,
            remote_host: '127.0.0.1',
            remote_port: port,
            remote_request_id: rid,
          }
        : undefined;

    if (body?.stream !== true) {
      let text = '';
      for (let i = 0; i < tokens; i++) text += standInToken(i);
      const choice = chat
        ? { index: 0, message: { role: 'assistant', content: text }, ...finish(tokens - 1) }
        : { index: 0, text, logprobs: null, ...finish(tokens - 1) };
      const out: JsonObject = { id, object: chat ? 'chat.completion' : 'text_completion', created: 0, model, choices: [choice], usage };
      if (kvOut !== undefined) out.kv_transfer_params = kvOut;
      send(200, JSON.stringify(out));
      return;
    }

    rec.status = 200;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
    res.flushHeaders();
    const event = (payload: JsonObject | string): Buffer => Buffer.from(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`);
    const chunkOf = (i: number, last: boolean): JsonObject => {
      const end = last ? finish(i) : { finish_reason: null };
      const choice = chat
        ? { index: 0, delta: i === 0 ? { role: 'assistant', content: standInToken(i) } : { content: standInToken(i) }, ...end }
        : { index: 0, text: standInToken(i), logprobs: null, ...end };
      return { id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: 0, model, choices: [choice] };
    };
    const events: Buffer[] = [];
    for (let i = 0; i < tokens; i++) events.push(event(chunkOf(i, i === tokens - 1)));
    const so = body?.stream_options;
    if (isJsonObject(so) && so.include_usage === true) {
      events.push(event({ id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: 0, model, choices: [], usage }));
    }
    events.push(event('[DONE]'));
    const limit = behavior.kind === 'stall' ? Math.min(behavior.events, events.length) : events.length;
    for (let k = 0; k < limit; k++) {
      // Two writes per event, cut in the middle: chunk boundaries fall inside events and UTF-8 characters.
      const e = events[k];
      if (splitWrites) {
        const cut = Math.floor(e.length / 2) | 1;
        if (!(await write(res, rec, recorder, e.subarray(0, cut)))) return;
        await sleep(0);
        if (!(await write(res, rec, recorder, e.subarray(cut)))) return;
      } else if (!(await write(res, rec, recorder, e))) return;
      await sleep(chunkDelayMs);
    }
    if (behavior.kind === 'stall') return;
    res.end(() => recorder.finish());
  };

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (req.method === 'GET' && path === '/health') {
      standIn.healthChecks++;
      req.resume();
      res.writeHead(standIn.healthy ? 200 : 503, { 'content-length': 0 });
      res.end();
      return;
    }
    if (req.method === 'POST' && path === '/reset_prefix_cache') {
      req.resume();
      const q = (req.url ?? '').indexOf('?');
      standIn.resets.push({ query: q === -1 ? '' : (req.url ?? '').slice(q), headers: req.headers });
      res.writeHead(options.resetStatus ?? 200, { 'content-length': 0 });
      res.end();
      return;
    }
    if (req.method === 'GET' && path === '/v1/models') {
      req.resume();
      const buf = Buffer.from(JSON.stringify({ object: 'list', data: [{ id: model, object: 'model', created: 0, owned_by: name }] }));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': buf.length });
      res.end(buf);
      return;
    }
    if (req.method !== 'POST' || (path !== '/v1/completions' && path !== '/v1/chat/completions')) {
      req.resume();
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `stand-in has no ${req.method ?? ''} ${path}`, code: 404 } }));
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', () => {});
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      let body: JsonObject | undefined;
      try {
        const parsed: unknown = JSON.parse(raw.toString('utf8'));
        if (isJsonObject(parsed)) body = parsed;
      } catch {
        body = undefined;
      }
      seen++;
      const ridHeader = req.headers['x-request-id'];
      const rec: StandInRequest = {
        method: req.method ?? 'POST',
        path,
        headers: req.headers,
        raw,
        body,
        requestId: typeof ridHeader === 'string' ? ridHeader : undefined,
        status: undefined,
        bytesSent: 0,
        sent: undefined,
        sha256: undefined,
        finished: false,
        clientClosed: false,
        blockedOnDrain: false,
      };
      if (record) requests.push(rec);
      const recorder = new Recorder(rec, record);
      active++;
      res.once('close', () => {
        active--;
        if (!rec.finished && !res.writableFinished) {
          rec.clientClosed = true;
          recorder.flush();
        }
      });
      completion(req, res, rec, recorder, path).catch(() => res.destroy());
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: options.port ?? 0, backlog: 2048 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  port = typeof addr === 'object' && addr !== null ? addr.port : 0;
  if (name === '') name = `${role}-${port}`;
  let closing: Promise<void> | undefined;

  const standIn: StandIn = {
    role,
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    healthChecks: 0,
    resets: [],
    metaserverPosts: [],
    healthy: true,
    behavior: options.behavior,
    inFlight: () => active,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
  return standIn;
}
