/**
 * 'push' (vLLM's own MooncakeConnector and its mooncake_connector_proxy.py): the proxy invents a transfer id
 * (`xfer-<request id>`) and calls prefill and decode at the same time:
 *
 * - prefill gets the client's body with `max_tokens: 1`, `stream: false`, `kv_transfer_params:
 *   {do_remote_decode: true, do_remote_prefill: false, transfer_id}` and an `X-data-parallel-rank` header
 *   naming the dp rank it is to use; its answer is read and dropped (only its cached_tokens is kept);
 * - decode gets the client's body with `kv_transfer_params: {do_remote_decode: false, do_remote_prefill: true,
 *   remote_bootstrap_addr, remote_engine_id, transfer_id}`: the prefill instance's bootstrap server and the
 *   engine id of that dp rank, as the server's `/query` lists them. Decode asks prefill for the KV; prefill
 *   writes it.
 *
 * The prefill instance is pinned once chosen (decode was told its address): its request is never retried on
 * another instance. A prefill that fails fails the client's request at once (decode would wait for KV that
 * never comes); a decode that cannot be reached aborts the prefill. Each prefill instance's `/query` answer is
 * cached for 30 s and read again after a failure.
 */
import type { Instance } from './instances';
import { MooncakeError } from '../errors';
import { queryBootstrap } from '../kv/vllm/bootstrap';
import { onInstance, openDecode, prefill, withRole, type CompletionContext, type CompletionDeps, type CompletionMode, type Dispatch } from './completion';
import { dispatchId, releaseOnce } from './modes';
import { buildPrefillBody, cachedTokensOf, type JsonObject } from './rewrite';

const TABLE_TTL_MS = 30_000;
const MAX_TABLES = 4096;

export class PushMode implements CompletionMode {
  private readonly tables = new Map<string, { at: number; engines: Promise<string[]> }>();
  private readonly cursor = new Map<string, number>();

  /** `bootstrapOf(instance url)`: the 'http://host:port' of that prefill instance's bootstrap server. */
  constructor(private readonly deps: CompletionDeps, private readonly bootstrapOf: (instanceUrl: string) => string) {}

  /** Engine id of each dp rank of a prefill instance (its bootstrap server's /query), cached. */
  private engines(inst: Instance, signal: AbortSignal): Promise<string[]> {
    const hit = this.tables.get(inst.url);
    if (hit && performance.now() - hit.at < TABLE_TTL_MS) return hit.engines;
    const address = this.bootstrapOf(inst.url);
    const engines = queryBootstrap(address, { timeoutMs: this.deps.o.timeouts.connectMs, signal }).then((t) => {
      const dps = [...t.keys()].sort((a, b) => a - b);
      if (dps.length === 0) throw new MooncakeError('CONNECT_FAILED', `no prefill worker registered at ${address} yet`, { details: { role: 'prefill' } });
      return dps.map((dp) => t.get(dp)!.engineId);
    });
    this.tables.set(inst.url, { at: performance.now(), engines });
    if (this.tables.size > MAX_TABLES) this.tables.delete(this.tables.keys().next().value as string);
    engines.catch(() => this.tables.delete(inst.url));
    return engines.catch((e: unknown) => {
      // The bootstrap server is part of the instance: its failure is the instance's (retried on another).
      const m = e instanceof MooncakeError ? e.message : String(e);
      throw new MooncakeError('CONNECT_FAILED', `prefill ${inst.url}: its bootstrap server ${address} failed: ${m}`, { cause: e, details: { role: 'prefill', retryable: true } });
    });
  }

  async dispatch(ctx: CompletionContext, body: JsonObject, n: number): Promise<Dispatch> {
    if (n > 0 && ctx.signal.aborted) throw ctx.signal.reason;
    const id = dispatchId(ctx, n);
    const transferId = `xfer-${id}`;
    const picked = await onInstance(this.deps, ctx, 'prefill', ctx.promptTokens, async (inst) => {
      const engines = await this.engines(inst, ctx.signal);
      const dp = (this.cursor.get(inst.url) ?? 0) % engines.length;
      this.cursor.set(inst.url, dp + 1);
      return { dp, engineId: engines[dp], bootstrap: this.bootstrapOf(inst.url) };
    });
    const inst = picked.instance;
    const { dp, engineId, bootstrap } = picked.result;
    ctx.route.prefill = inst.url;
    let cached: number | undefined;
    const prefillBody = buildPrefillBody(body, this.deps.o.prefillMinTokens, { do_remote_decode: true, do_remote_prefill: false, transfer_id: transferId });
    void prefill(this.deps, ctx, prefillBody, id, { instance: inst, headers: { 'x-data-parallel-rank': String(dp) } })
      .then((p) => {
        cached = cachedTokensOf(p.json);
      })
      .catch((e: unknown) => {
        if (ctx.signal.aborted) return;
        if (!(e instanceof MooncakeError && e.details?.httpStatus !== undefined)) this.tables.delete(inst.url);
        const err = e instanceof MooncakeError ? e : new MooncakeError('INTERNAL', String(e), { cause: e });
        this.deps.o.log('warn', `prefill ${inst.url} failed for ${transferId} (${err.message}); failing the request (its decode waits for KV that will not come)`, { requestId: ctx.requestId });
        ctx.fail(withRole(err, 'prefill') as MooncakeError);
      })
      .finally(() => inst.release(ctx.promptTokens));
    const decodeBody: JsonObject = {
      ...body,
      kv_transfer_params: { do_remote_decode: false, do_remote_prefill: true, remote_bootstrap_addr: bootstrap, remote_engine_id: engineId, transfer_id: transferId },
    };
    try {
      const decode = await openDecode(this.deps, ctx, decodeBody, id);
      return { decode, cachedTokens: () => cached, release: releaseOnce(decode.instance, ctx.decodeTokens) };
    } catch (e) {
      // No decode will ask for this transfer: stop the prefill too (the client gets decode's failure).
      if (!ctx.signal.aborted) ctx.fail(withRole(e, 'decode') as MooncakeError);
      throw e;
    }
  }
}
