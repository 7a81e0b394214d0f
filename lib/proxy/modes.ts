/**
 * The proxy's request flows (ProxyOptions.mode). A mode dispatches one request: it makes prefill happen and
 * opens decode's answer; lib/proxy/completion.ts does the rest (relay, cached_tokens, re-dispatch). A new flow
 * is one more CompletionMode: 'pull' and 'layerwise' are here, 'push' (vLLM's own MooncakeConnector, prefill
 * and decode called at once with one transfer id) in push-mode.ts.
 */
import { randomUUID } from 'node:crypto';
import { MooncakeError } from '../errors';
import { openDecode, prefill, type CompletionContext, type CompletionDeps, type CompletionMode, type Dispatch } from './completion';
import { answerOf } from './forward';
import { buildDecodeBody, buildPrefillBody, cachedTokensOf, type JsonObject } from './rewrite';

/** The id of the n-th dispatch of a request: the client's id first, a suffixed one for re-dispatches. */
export function dispatchId(ctx: CompletionContext, n: number): string {
  return n === 0 ? ctx.requestId : `${ctx.requestId.slice(0, 200)}-recompute-${n}`;
}

/**
 * 'pull' (MooncakeConnectorV1, vllm-ascend's load_balance_proxy_server_example.py): prefill with max_tokens 1
 * and `do_remote_decode`, then decode with the kv_transfer_params prefill returned; decode reads the KV.
 */
export class PullMode implements CompletionMode {
  constructor(private readonly deps: CompletionDeps) {}

  async dispatch(ctx: CompletionContext, body: JsonObject, n: number): Promise<Dispatch> {
    const id = dispatchId(ctx, n);
    const p = await prefill(this.deps, ctx, buildPrefillBody(body, this.deps.o.prefillMinTokens), id);
    const cached = cachedTokensOf(p.json);
    const decode = await openDecode(this.deps, ctx, buildDecodeBody(body, p.json), id);
    return { decode, cachedTokens: () => cached, release: releaseOnce(decode.instance, ctx.decodeTokens) };
  }
}

export function releaseOnce(inst: { release(tokens: number): void }, tokens: number): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    inst.release(tokens);
  };
}

/** A request waiting for decode's rendezvous at /v1/metaserver. */
interface Rendezvous {
  ctx: CompletionContext;
  body: JsonObject;
  /** Decode child requests the prefill waits for (one per prompt of a multi-prompt completion). */
  expected: number;
  posted: Map<string, JsonObject>;
  cached: number | undefined;
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

/**
 * 'layerwise' (vllm-ascend's MooncakeLayerwiseConnector and load_balance_proxy_layerwise_server_example.py):
 * decode first, with `kv_transfer_params: {do_remote_prefill: true, do_remote_decode: false, metaserver}`.
 * Decode's scheduler POSTs its own kv_transfer_params to `metaserver` (this proxy's /v1/metaserver, with its
 * vLLM request id `cmpl-<id>-0` / `chatcmpl-<id>`); the proxy then sends prefill the request with those params
 * (max_tokens 1, min_tokens 1), and prefill pushes the KV into decode layer by layer. A completion with several
 * prompts waits for every child's params and sends them together as `batch_kv_transfer_params`.
 */
export class LayerwiseMode implements CompletionMode {
  private readonly waiting = new Map<string, Rendezvous>();

  constructor(private readonly deps: CompletionDeps, private readonly metaserverUrl: () => string) {}

  /** Requests waiting for their rendezvous (for tests and stats). */
  get pending(): number {
    return this.waiting.size;
  }

  async dispatch(ctx: CompletionContext, body: JsonObject, n: number): Promise<Dispatch> {
    if (n > 0 && ctx.signal.aborted) throw ctx.signal.reason;
    // A fresh id per dispatch: decode's request id is what the rendezvous is found by.
    const id = randomUUID();
    const prompts = Array.isArray(body.prompt) && body.prompt.length > 0 && typeof body.prompt[0] !== 'number' ? body.prompt.length : 1;
    const r: Rendezvous = { ctx, body, expected: prompts, posted: new Map(), cached: undefined };
    this.waiting.set(id, r);
    const decodeBody: JsonObject = { ...body, kv_transfer_params: { do_remote_decode: false, do_remote_prefill: true, metaserver: this.metaserverUrl() } };
    try {
      const decode = await openDecode(this.deps, ctx, decodeBody, id);
      const release = releaseOnce(decode.instance, ctx.decodeTokens);
      return {
        decode,
        cachedTokens: () => r.cached,
        release: () => {
          this.waiting.delete(id);
          release();
        },
      };
    } catch (e) {
      this.waiting.delete(id);
      throw e;
    }
  }

  /**
   * POST /v1/metaserver: decode's kv_transfer_params for one of its requests. Answers 200 once the prefill it
   * triggers is done (or at once for a child of a multi-prompt completion that still waits for its siblings),
   * 404 for a request the proxy does not know, 400 for a body without `request_id`. A prefill that fails fails
   * the client's request too (decode would otherwise wait for KV that never comes).
   */
  async metaserver(params: JsonObject, send: (status: number, body: JsonObject) => void): Promise<void> {
    const rid = params.request_id;
    if (typeof rid !== 'string' || rid === '') return send(400, { error: { message: 'kv_transfer_params need a request_id', code: 400 } });
    const key = UUID.exec(rid)?.[0].toLowerCase();
    const r = key === undefined ? undefined : this.waiting.get(key);
    if (r === undefined || key === undefined) return send(404, { error: { message: `no request waiting for ${JSON.stringify(rid)}`, code: 404 } });
    if (r.posted.has(rid) || r.posted.size >= r.expected) return send(409, { error: { message: `${JSON.stringify(rid)} was already posted`, code: 409 } });
    r.posted.set(rid, params);
    if (r.posted.size < r.expected) return send(200, { status: 'waiting', posted: r.posted.size, expected: r.expected });
    const kv: JsonObject =
      r.expected === 1 ? params : { do_remote_decode: true, do_remote_prefill: false, batch_kv_transfer_params: Object.fromEntries(r.posted) };
    try {
      const p = await prefill(this.deps, r.ctx, buildPrefillBody(r.body, this.deps.o.prefillMinTokens, kv), key);
      r.cached = cachedTokensOf(p.json);
      send(200, { status: 'ok', prefill: p.instance.url });
    } catch (e) {
      const err = e instanceof MooncakeError ? e : new MooncakeError('INTERNAL', String(e), { cause: e });
      const answer = answerOf(err);
      if (!r.ctx.signal.aborted) r.ctx.fail(err);
      send(answer?.status ?? 502, { error: { message: `prefill failed: ${err.message}`, code: answer?.status ?? 502 } });
    }
  }
}
