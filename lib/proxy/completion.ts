/**
 * One completion request through the proxy: a mode (lib/proxy/modes.ts) dispatches it — it makes the prefill
 * happen and opens the decode answer — and this loop sends decode's answer to the client, re-dispatching when
 * decode answers `stop_reason: "recomputed"` (bounded), as vllm-ascend's proxy does.
 *
 * The calls a mode makes (`prefill`, `openDecode`) are here too: bounded retries on another instance (after
 * connection failures, and after HTTP errors other than 400 unless turned off), timeouts, and load accounting.
 */
import type * as http from 'node:http';
import { MooncakeError } from '../errors';
import { relaySse, reviewJson, type RelayHooks, type RelayOutcome } from './decode-relay';
import { answerOf, httpError, readBody, relay, sendUpstream, withRetries, type Routed, type UpstreamAnswer } from './forward';
import type { Instance, InstancePool } from './instances';
import type { ProxyMetrics } from './metrics';
import type { ResolvedProxyOptions, Role } from './options';
import { clientResponseHeaders, continuedRequest, isJsonObject, type JsonObject } from './rewrite';

/** What the proxy knows about one client request. */
export interface CompletionContext {
  /** '/v1/completions' or '/v1/chat/completions'. */
  path: string;
  /** The client's body. */
  body: JsonObject;
  /** The id the client sees (X-Request-Id); upstream ids may differ per dispatch. */
  requestId: string;
  /** Headers for upstream requests (x-request-id is set per call). */
  headers: http.OutgoingHttpHeaders;
  promptTokens: number;
  decodeTokens: number;
  /** Aborted when the client goes away, the proxy closes, a timeout fires, or a mode fails the request. */
  signal: AbortSignal;
  /** Fails the whole request with `reason` (its upstream calls are aborted). */
  fail(reason: MooncakeError): void;
  res: http.ServerResponse;
  /** Instances used, for the debug log line. */
  route: { prefill?: string; decode?: string };
  /** Set when the proxy cut the client response because an upstream failed mid-answer. */
  markUpstreamFailed(): void;
}

/** The server's parts a completion uses. */
export interface CompletionDeps {
  o: ResolvedProxyOptions;
  agent: http.Agent;
  pools: Record<Role, InstancePool>;
  metrics: ProxyMetrics;
  onRetry(role: Role, inst: Instance, e: MooncakeError, requestId: string): void;
  /** Answers the client after a failure before any response byte. */
  upstreamFailure(res: http.ServerResponse, role: Role, e: unknown, requestId: string): void;
}

/** Decode's answer, opened: `lateError()` tells why it failed after its headers (an idle timeout, a reset). */
export type OpenDecode = Routed<http.IncomingMessage> & { lateError(): MooncakeError | undefined };

/** A dispatched request: decode's answer is open; `release` ends the dispatch's load accounting. */
export interface Dispatch {
  decode: OpenDecode;
  /** Prefill's cached_tokens once known. */
  cachedTokens(): number | undefined;
  release(): void;
}

/** How requests flow from prefill to decode (see ProxyMode). */
export interface CompletionMode {
  /** Dispatches `body` (the client's, or its continuation after "recomputed"); `n` counts re-dispatches. */
  dispatch(ctx: CompletionContext, body: JsonObject, n: number): Promise<Dispatch>;
}

/** A prefill answer, read whole. */
export interface PrefillResult {
  instance: Instance;
  json: JsonObject;
}

/**
 * Runs `attempt` on an instance of `role` with the retry policy; an error comes out marked with the role (or,
 * when the request itself was failed, as the request's reason).
 */
export async function onInstance<T>(deps: CompletionDeps, ctx: CompletionContext, role: Role, tokens: number, attempt: (inst: Instance) => Promise<T>): Promise<Routed<T>> {
  try {
    return await withRetries(deps.pools[role], tokens, deps.o.retries, ctx.signal, attempt, (inst, e) => deps.onRetry(role, inst, e, ctx.requestId));
  } catch (e) {
    throw withRole(ctx.signal.aborted ? ctx.signal.reason : e, role);
  }
}

/** POSTs `raw` to the request's path on `inst`; resolves at the answer's headers. */
function post(deps: CompletionDeps, ctx: CompletionContext, inst: Instance, headers: http.OutgoingHttpHeaders, raw: Buffer, idleTimeoutMs: number, onLateError?: (e: MooncakeError) => void): Promise<http.IncomingMessage> {
  return sendUpstream({ agent: deps.agent, origin: inst.url, method: 'POST', path: ctx.path, headers, body: raw, signal: ctx.signal, connectTimeoutMs: deps.o.timeouts.connectMs, idleTimeoutMs, onLateError });
}

/**
 * Sends a prefill request (within `timeouts.prefillMs`; a timeout fails the whole request) and reads its JSON
 * answer. Rejects with the HTTP answer to forward (answerOf) when prefill refused, or a coded error. `pinned`:
 * on that instance only (already chosen and acquired by the caller, who releases it), with extra headers.
 */
export async function prefill(deps: CompletionDeps, ctx: CompletionContext, payload: JsonObject, upstreamId: string, pinned?: { instance: Instance; headers: http.OutgoingHttpHeaders }): Promise<PrefillResult> {
  const { o } = deps;
  const started = process.hrtime.bigint();
  const timer = setTimeout(
    () => ctx.fail(new MooncakeError('TIMEOUT', `prefill did not answer within ${o.timeouts.prefillMs} ms`, { details: { role: 'prefill' } })),
    o.timeouts.prefillMs,
  );
  const raw = Buffer.from(JSON.stringify(payload));
  const headers = { ...ctx.headers, ...pinned?.headers, 'x-request-id': upstreamId, accept: 'application/json', 'accept-encoding': 'identity' };
  const attempt = async (inst: Instance): Promise<Buffer> => {
    const up = await post(deps, ctx, inst, headers, raw, 0);
    const body = await readBody(up, o.maxPrefillResponseBytes, `prefill response from ${inst.url}`);
    const status = up.statusCode ?? 502;
    if (status >= 300) throw httpError(inst.url, { status, headers: up.headers, body }, o.retries.onHttpError && status >= 400);
    return body;
  };
  let routed: Routed<Buffer>;
  try {
    if (pinned) {
      try {
        routed = { instance: pinned.instance, result: await attempt(pinned.instance), attempts: 1 };
      } catch (e) {
        throw withRole(ctx.signal.aborted ? ctx.signal.reason : e, 'prefill');
      }
    } else routed = await onInstance(deps, ctx, 'prefill', ctx.promptTokens, attempt);
  } finally {
    clearTimeout(timer);
  }
  if (!pinned) routed.instance.release(ctx.promptTokens);
  ctx.route.prefill = routed.instance.url;
  deps.metrics.observePrefill(Number(process.hrtime.bigint() - started) / 1e9);
  let json: unknown;
  try {
    json = JSON.parse(routed.result.toString('utf8'));
  } catch {
    json = undefined;
  }
  if (!isJsonObject(json)) {
    throw new MooncakeError('PROTOCOL_ERROR', `prefill instance ${routed.instance.url} returned a body that is not JSON (or not an object)`, { details: { role: 'prefill', status: 502 } });
  }
  return { instance: routed.instance, json };
}

/** Opens a decode answer (resolves at its headers). Rejects with the HTTP answer to forward, or a coded error. */
export async function openDecode(deps: CompletionDeps, ctx: CompletionContext, payload: JsonObject, upstreamId: string): Promise<OpenDecode> {
  const { o } = deps;
  let late: MooncakeError | undefined;
  const raw = Buffer.from(JSON.stringify(payload));
  const headers = { ...ctx.headers, 'x-request-id': upstreamId };
  const routed = await onInstance(deps, ctx, 'decode', ctx.decodeTokens, async (inst) => {
    const up = await post(deps, ctx, inst, headers, raw, o.timeouts.decodeIdleMs, (e) => {
      late = e;
    });
    const status = up.statusCode ?? 502;
    if (status >= 400) {
      const body = await readBody(up, o.maxPrefillResponseBytes, `decode error answer from ${inst.url}`);
      throw httpError(inst.url, { status, headers: up.headers, body }, o.retries.onHttpError);
    }
    return up;
  });
  ctx.route.decode = routed.instance.url;
  return { ...routed, lateError: () => late };
}

/** Marks which step an error comes from (for the client's message and the metrics), unless it says already. */
export function withRole(e: unknown, role: Role): unknown {
  if (e instanceof MooncakeError && answerOf(e) === undefined) {
    if (e.details === undefined) return new MooncakeError(e.code, e.message, { cause: e.cause, details: { role } });
    e.details.role ??= role;
  }
  return e;
}

function sendAnswer(res: http.ServerResponse, a: UpstreamAnswer, requestId: string): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(a.status, { 'content-type': a.headers['content-type'] ?? 'application/json', 'content-length': a.body.length, 'x-request-id': requestId });
  res.end(a.body);
}

/**
 * Runs one completion request with `mode`: dispatch, send decode's answer, and re-dispatch after "recomputed"
 * while `recompute` allows it. Every failure before the first response byte gets an answer; after it, the
 * client connection is cut (the client sees a truncated answer, never a made-up end).
 */
export async function runCompletion(deps: CompletionDeps, mode: CompletionMode, ctx: CompletionContext): Promise<void> {
  const { o } = deps;
  const { res } = ctx;
  const stream = ctx.body.stream === true;
  const watch = o.copyCachedTokens || o.recompute.enabled;
  // Only a prompt that can be continued as text is re-dispatched (a string prompt, or a chat).
  const continuable = o.recompute.enabled && continuedRequest(ctx.body, '', 0, 0) !== undefined;
  let body = ctx.body;
  let earlierText = '';
  let tokens = 0;
  for (let n = 0; ; n++) {
    let d: Dispatch;
    try {
      d = await mode.dispatch(ctx, body, n);
    } catch (e) {
      const err = ctx.signal.aborted ? ctx.signal.reason : e;
      if (res.headersSent) {
        o.log('warn', `re-dispatch after "recomputed" failed: ${err instanceof Error ? err.message : String(err)}`, { requestId: ctx.requestId });
        ctx.markUpstreamFailed();
        res.destroy();
        return;
      }
      const answer = answerOf(err);
      if (answer !== undefined) {
        o.log('warn', `${String((err as MooncakeError).message)}; forwarding the answer`, { requestId: ctx.requestId });
        return sendAnswer(res, answer, ctx.requestId);
      }
      const role = err instanceof MooncakeError && err.details?.role === 'prefill' ? 'prefill' : 'decode';
      return deps.upstreamFailure(res, role, err, ctx.requestId);
    }
    const up = d.decode.result;
    const hooks: RelayHooks = {
      cachedTokens: () => (o.copyCachedTokens ? d.cachedTokens() : undefined),
      catchRecomputed: continuable && n < o.recompute.maxRedispatches,
      earlierText,
    };
    const onUpstreamError = (e: Error): void => {
      if (ctx.signal.aborted) return; // the client went away, or the proxy is closing
      ctx.markUpstreamFailed();
      const why = d.decode.lateError() ?? e;
      if (why instanceof MooncakeError && why.code === 'TIMEOUT') deps.metrics.timeout('decode');
      o.log('warn', `decode ${d.decode.instance.url} failed mid-response: ${why.message}`, { requestId: ctx.requestId });
    };
    let outcome: RelayOutcome;
    try {
      if (!res.headersSent && (!watch || stream)) {
        const out = clientResponseHeaders(up.headers);
        out['x-request-id'] = ctx.requestId;
        if (watch) delete out['content-length']; // events may change size
        res.writeHead(up.statusCode ?? 502, out);
        // A stream gets its headers at once; a sized body goes out with them in one write.
        if (up.headers['content-length'] === undefined || watch) res.flushHeaders();
      }
      if (!watch) outcome = { kind: 'sent', complete: await relay(up, res, onUpstreamError) };
      else if (stream) outcome = await relaySse(up, res, hooks, onUpstreamError);
      else outcome = await sendJson(up, res, hooks, ctx, deps, onUpstreamError);
    } finally {
      d.release();
    }
    if (outcome.kind === 'sent') return;
    // Decode gave up on the request: continue it on a new prefill/decode pair.
    earlierText += outcome.text;
    tokens += outcome.tokens;
    deps.metrics.recompute();
    const next = continuedRequest(ctx.body, earlierText, tokens, n + 1)!;
    o.log('info', `decode ${d.decode.instance.url} answered "recomputed"; re-dispatching (${n + 1}/${o.recompute.maxRedispatches})`, { requestId: ctx.requestId });
    body = next;
  }
}

/**
 * Reads a stream whole, up to `limit` bytes. Past the limit, resolves with what it read so far and leaves the
 * rest in the (paused) stream.
 */
function readUpTo(up: http.IncomingMessage, limit: number): Promise<{ chunks: Buffer[]; whole: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      up.off('data', onData);
      up.off('end', onEnd);
      up.off('error', onError);
    };
    const onData = (c: Buffer): void => {
      chunks.push(c);
      size += c.length;
      if (size > limit) {
        up.pause();
        cleanup();
        resolve({ chunks, whole: false });
      }
    };
    const onEnd = (): void => {
      cleanup();
      resolve({ chunks, whole: true });
    };
    const onError = (e: Error): void => {
      cleanup();
      reject(e);
    };
    up.on('data', onData);
    up.once('end', onEnd);
    up.once('error', onError);
  });
}

/**
 * A JSON decode answer: read whole, reviewed, then sent with its final length. One larger than
 * `maxPrefillResponseBytes` is not reviewed: it goes to the client as it is.
 */
async function sendJson(up: http.IncomingMessage, res: http.ServerResponse, hooks: RelayHooks, ctx: CompletionContext, deps: CompletionDeps, onUpstreamError: (e: Error) => void): Promise<RelayOutcome> {
  const out = clientResponseHeaders(up.headers);
  out['x-request-id'] = ctx.requestId;
  let read: { chunks: Buffer[]; whole: boolean };
  try {
    read = await readUpTo(up, deps.o.maxPrefillResponseBytes);
  } catch (e) {
    onUpstreamError(e instanceof Error ? e : new Error(String(e)));
    if (res.headersSent) res.destroy();
    else deps.upstreamFailure(res, 'decode', withRole(e, 'decode'), ctx.requestId);
    return { kind: 'sent', complete: false };
  }
  if (!read.whole) {
    if (!res.headersSent) res.writeHead(up.statusCode ?? 502, out);
    for (const c of read.chunks) res.write(c);
    return { kind: 'sent', complete: await relay(up, res, onUpstreamError) };
  }
  const r = reviewJson(Buffer.concat(read.chunks), hooks);
  if (r.kind === 'recomputed') return r;
  out['content-length'] = String(r.body.length);
  delete out['transfer-encoding'];
  if (!res.headersSent) res.writeHead(up.statusCode ?? 502, out);
  res.end(r.body);
  return { kind: 'sent', complete: true };
}
