/**
 * Request rewriting for prefill/decode disaggregation, as vllm-ascend's proxies do it: the prefill request is the
 * client's body capped to one token, not streamed, with `kv_transfer_params.do_remote_decode = true`; the decode
 * request is the client's body plus the `kv_transfer_params` the prefill response returned. Also what the proxy
 * reads and writes in answers (`cached_tokens`, the first choice) and the continuation after "recomputed".
 */

export type JsonObject = Record<string, unknown>;

/** The kv_transfer_params the proxy sends to a prefill instance (vLLM's NIXL/Mooncake connector convention). */
export function prefillKvTransferParams(): JsonObject {
  return {
    do_remote_decode: true,
    do_remote_prefill: false,
    remote_engine_id: null,
    remote_block_ids: null,
    remote_host: null,
    remote_port: null,
  };
}

export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The prefill request: `max_tokens: 1`, `min_tokens: 1` (with `alwaysMinTokens`, as vllm-ascend: otherwise a
 * first token that is EOS makes prefill answer without kv_transfer_params and decode recomputes the whole prompt;
 * without it, only when the client set min_tokens), `max_completion_tokens: 1` when the client set it,
 * `stream: false`, no `stream_options`, and `kv_transfer_params` (default: asking for a remote decode).
 */
export function buildPrefillBody(client: Readonly<JsonObject>, alwaysMinTokens = true, kvTransferParams: JsonObject = prefillKvTransferParams()): JsonObject {
  const body: JsonObject = { ...client };
  body.max_tokens = 1;
  if (alwaysMinTokens || 'min_tokens' in body) body.min_tokens = 1;
  if ('max_completion_tokens' in body) body.max_completion_tokens = 1;
  body.stream = false;
  delete body.stream_options;
  body.kv_transfer_params = kvTransferParams;
  return body;
}

/**
 * The `prompt_tokens_details.cached_tokens` of a prefill answer (0 when it has none, as vllm-ascend's proxy
 * counts it), or undefined when the answer is not an object.
 */
export function cachedTokensOf(prefillResponse: unknown): number | undefined {
  if (!isJsonObject(prefillResponse)) return undefined;
  const usage = prefillResponse.usage;
  const details = isJsonObject(usage) ? usage.prompt_tokens_details : undefined;
  const cached = isJsonObject(details) ? details.cached_tokens : undefined;
  return typeof cached === 'number' && Number.isInteger(cached) ? cached : 0;
}

/** Writes `cached` into a response object's `usage.prompt_tokens_details.cached_tokens`. False when it has no usage. */
export function setCachedTokens(response: JsonObject, cached: number): boolean {
  const usage = response.usage;
  if (!isJsonObject(usage)) return false;
  const details = isJsonObject(usage.prompt_tokens_details) ? usage.prompt_tokens_details : {};
  details.cached_tokens = cached;
  usage.prompt_tokens_details = details;
  return true;
}

/** The first choice of a completion (or chunk), its text so far, and its stop_reason. */
export function firstChoice(response: unknown): { text: string; stopReason: unknown; choice: JsonObject } | undefined {
  if (!isJsonObject(response) || !Array.isArray(response.choices) || !isJsonObject(response.choices[0])) return undefined;
  const choice = response.choices[0];
  const delta = isJsonObject(choice.delta) ? choice.delta : undefined;
  const message = isJsonObject(choice.message) ? choice.message : undefined;
  const pick = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  const text = pick(delta?.content) ?? pick(message?.content) ?? pick(choice.text) ?? '';
  return { text, stopReason: choice.stop_reason, choice };
}

/**
 * The request that continues a generation decode gave up on (`stop_reason: "recomputed"`): the text generated so
 * far joins the prompt and the output budget shrinks by the tokens spent (vllm-ascend's formula: the budget minus
 * the completion tokens counted, plus one per re-dispatch). A completion prompt that is a string gets the text
 * appended; a chat continues from an assistant message with vLLM's `continue_final_message`. Undefined when the
 * prompt cannot be continued as text (token ids, several prompts).
 */
export function continuedRequest(original: Readonly<JsonObject>, generated: string, tokensCounted: number, redispatches: number): JsonObject | undefined {
  const body: JsonObject = { ...original };
  if (typeof original.prompt === 'string') body.prompt = original.prompt + generated;
  else if (Array.isArray(original.messages) && original.prompt === undefined) {
    const messages = original.messages.map((m) => (isJsonObject(m) ? { ...m } : m));
    const last = messages[messages.length - 1];
    if (original.continue_final_message === true && isJsonObject(last) && typeof last.content === 'string') last.content += generated;
    else messages.push({ role: 'assistant', content: generated });
    body.messages = messages;
    body.continue_final_message = true;
    body.add_generation_prompt = false;
  } else return undefined;
  for (const key of ['max_tokens', 'max_completion_tokens'] as const) {
    const v = original[key];
    if (typeof v === 'number' && Number.isInteger(v)) body[key] = Math.max(1, v - tokensCounted + redispatches);
  }
  return body;
}

/**
 * The decode request: the client's body, plus the prefill response's `kv_transfer_params` when it has them
 * (as the toy proxy does: without them the decode instance simply computes the prompt itself).
 */
export function buildDecodeBody(client: Readonly<JsonObject>, prefillResponse: unknown): JsonObject {
  const body: JsonObject = { ...client };
  const params = isJsonObject(prefillResponse) ? prefillResponse.kv_transfer_params : undefined;
  if (isJsonObject(params) && Object.keys(params).length > 0) body.kv_transfer_params = params;
  return body;
}

function textTokens(s: string): number {
  return Math.ceil(Buffer.byteLength(s, 'utf8') / 4);
}

function contentTokens(content: unknown): number {
  if (typeof content === 'string') return textTokens(content);
  if (Array.isArray(content)) {
    let n = 0;
    for (const part of content) {
      if (typeof part === 'string') n += textTokens(part);
      else if (isJsonObject(part) && typeof part.text === 'string') n += textTokens(part.text);
    }
    return n;
  }
  return 0;
}

/**
 * A cheap prompt-size estimate: token ids are counted, text is counted as UTF-8 bytes / 4 (the same order of
 * magnitude as vllm-ascend's load balancer, which scores a request by its byte length).
 */
export function estimatePromptTokens(body: Readonly<JsonObject>): number {
  const prompt = body.prompt;
  let n = 0;
  if (typeof prompt === 'string') n += textTokens(prompt);
  else if (Array.isArray(prompt)) {
    for (const p of prompt) {
      if (typeof p === 'number') n += 1;
      else if (typeof p === 'string') n += textTokens(p);
      else if (Array.isArray(p)) n += p.length;
    }
  }
  if (Array.isArray(body.messages)) {
    for (const m of body.messages) if (isJsonObject(m)) n += contentTokens(m.content) + 4;
  }
  return n;
}

/** Tokens the client asked to generate (max_completion_tokens, else max_tokens, else 0). */
export function requestedOutputTokens(body: Readonly<JsonObject>): number {
  const v = body.max_completion_tokens ?? body.max_tokens;
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.floor(v) : 0;
}

/**
 * Hop-by-hop and framing headers never copied between client and upstream (RFC 9110 section 7.6.1), plus
 * `host` and `content-length`, which the proxy sets itself on the upstream request.
 */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings'];
const REQUEST_DROP = new Set([...HOP_BY_HOP, 'host', 'content-length', 'expect']);
const RESPONSE_DROP = new Set(HOP_BY_HOP);

function connectionListed(headers: Readonly<Record<string, string | string[] | undefined>>): Set<string> {
  const c = headers.connection;
  const text = Array.isArray(c) ? c.join(',') : (c ?? '');
  return new Set(text.split(',').map((s) => s.trim().toLowerCase()).filter((s) => s !== ''));
}

/** Copies client headers for an upstream request (auth, request ids, custom headers pass through). */
export function upstreamRequestHeaders(client: Readonly<Record<string, string | string[] | undefined>>): Record<string, string | string[]> {
  const listed = connectionListed(client);
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(client)) {
    const key = k.toLowerCase();
    if (v === undefined || REQUEST_DROP.has(key) || listed.has(key)) continue;
    out[key] = v;
  }
  return out;
}

/** Copies an upstream response's headers for the client (content-length and content-type included). */
export function clientResponseHeaders(upstream: Readonly<Record<string, string | string[] | undefined>>): Record<string, string | string[]> {
  const listed = connectionListed(upstream);
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(upstream)) {
    const key = k.toLowerCase();
    if (v === undefined || RESPONSE_DROP.has(key) || listed.has(key)) continue;
    out[key] = v;
  }
  return out;
}
