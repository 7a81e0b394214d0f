import { describe, expect, it } from 'vitest';
import { buildDecodeBody, buildPrefillBody, estimatePromptTokens } from '../../lib/proxy';
import { clientResponseHeaders, requestedOutputTokens, upstreamRequestHeaders } from '../../lib/proxy/rewrite';

describe('body rewriting', () => {
  it('builds the prefill body without touching the client body', () => {
    const client = { model: 'm', prompt: 'p', max_tokens: 100, stream: true, stream_options: { include_usage: true }, kv_transfer_params: { x: 1 } };
    const copy = structuredClone(client);
    expect(buildPrefillBody(client)).toEqual({
      model: 'm',
      prompt: 'p',
      max_tokens: 1,
      min_tokens: 1, // always, as vllm-ascend: a first-token EOS must not cost decode the whole prompt
      stream: false,
      kv_transfer_params: { do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null },
    });
    expect(client).toEqual(copy);
  });

  it('adds max_tokens even when the client relied on the server default', () => {
    const b = buildPrefillBody({ messages: [] });
    expect(b.max_tokens).toBe(1);
    expect(b.min_tokens).toBe(1);
    expect(b).not.toHaveProperty('max_completion_tokens');
  });

  it('without alwaysMinTokens, sets min_tokens only when the client did (the earlier behaviour)', () => {
    expect(buildPrefillBody({ messages: [] }, false)).not.toHaveProperty('min_tokens');
    expect(buildPrefillBody({ messages: [], min_tokens: 5 }, false).min_tokens).toBe(1);
  });

  it("puts the prefill answer's kv_transfer_params into the decode body", () => {
    const client = { prompt: 'p', max_tokens: 9, stream: true };
    const kv = { do_remote_prefill: true, do_remote_decode: false, remote_block_ids: [1, 2], remote_engine_id: 'e', remote_host: 'h', remote_port: 5 };
    expect(buildDecodeBody(client, { id: 'x', kv_transfer_params: kv })).toEqual({ ...client, kv_transfer_params: kv });
    expect(buildDecodeBody(client, { id: 'x' })).toEqual(client);
    expect(buildDecodeBody(client, { kv_transfer_params: {} })).toEqual(client);
    expect(buildDecodeBody(client, { kv_transfer_params: 'junk' })).toEqual(client);
    expect(buildDecodeBody(client, [1])).toEqual(client);
  });

  it('estimates prompt tokens from text, token ids and chat messages', () => {
    expect(estimatePromptTokens({ prompt: 'abcdefgh' })).toBe(2);
    expect(estimatePromptTokens({ prompt: [1, 2, 3] })).toBe(3);
    expect(estimatePromptTokens({ prompt: [[1, 2], [3]] })).toBe(3);
    expect(estimatePromptTokens({ prompt: ['abcd', 'abcd'] })).toBe(2);
    expect(estimatePromptTokens({ messages: [{ role: 'user', content: 'abcd' }, { role: 'user', content: [{ type: 'text', text: 'abcdefgh' }] }] })).toBe(1 + 4 + 2 + 4);
    expect(estimatePromptTokens({})).toBe(0);
    expect(requestedOutputTokens({ max_tokens: 10 })).toBe(10);
    expect(requestedOutputTokens({ max_tokens: 10, max_completion_tokens: 3 })).toBe(3);
    expect(requestedOutputTokens({ max_tokens: 'x' })).toBe(0);
  });
});

describe('header forwarding', () => {
  it('keeps auth and custom headers, drops hop-by-hop and framing headers', () => {
    const out = upstreamRequestHeaders({
      authorization: 'Bearer k',
      'x-request-id': 'r',
      'x-custom': 'c',
      host: 'proxy:8000',
      'content-length': '12',
      connection: 'keep-alive, x-secret-hop',
      'x-secret-hop': 'gone',
      'keep-alive': 'timeout=5',
      'transfer-encoding': 'chunked',
      te: 'trailers',
      upgrade: 'h2c',
      'proxy-authorization': 'Basic zzz',
    });
    expect(out).toEqual({ authorization: 'Bearer k', 'x-request-id': 'r', 'x-custom': 'c' });
  });

  it("keeps the upstream's content-type and content-length for the client", () => {
    expect(clientResponseHeaders({ 'content-type': 'text/event-stream', 'content-length': '5', connection: 'close', 'transfer-encoding': 'chunked', date: 'd' })).toEqual({
      'content-type': 'text/event-stream',
      'content-length': '5',
      date: 'd',
    });
  });
});
