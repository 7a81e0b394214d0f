/**
 * Request rewriting for prefill/decode disaggregation, as vllm-ascend's proxies do it (reference section C and
 * B.4): the prefill request is the client's body capped to one token, not streamed, with
 * `kv_transfer_params.do_remote_decode = true`; the decode request is the client's body plus the
 * `kv_transfer_params` the prefill response returned.
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
 * The prefill request: `max_tokens: 1` (and `max_completion_tokens: 1` / `min_tokens: 1` when the client set
 * them), `stream: false`, no `stream_options`, and `kv_transfer_params` asking for a remote decode.
 */
export function buildPrefillBody(client: Readonly<JsonObject>): JsonObject {
  const body: JsonObject = { ...client };
  body.max_tokens = 1;
  if ('max_completion_tokens' in body) body.max_completion_tokens = 1;
  if ('min_tokens' in body) body.min_tokens = 1;
  body.stream = false;
  delete body.stream_options;
  body.kv_transfer_params = prefillKvTransferParams();
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
