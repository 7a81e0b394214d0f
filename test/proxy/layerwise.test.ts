// mode 'layerwise' (vllm-ascend's layerwise connector and its proxy): decode first, with the proxy's
// /v1/metaserver in kv_transfer_params; decode POSTs its params there; the proxy sends them to prefill (which
// then pushes the KV into decode); decode, waiting for that, answers the client.
import { afterEach, describe, expect, it } from 'vitest';
import { createProxy } from '../../lib/proxy';
import { Harness, json, request, standInToken, waitFor, type StandIn } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

async function layerwise(opts: { prefill?: StandIn[]; decode?: StandIn[] } = {}) {
  const prefill = opts.prefill ?? [await h.standIn({ role: 'prefill', cachedTokens: 5 })];
  const decode = opts.decode ?? [await h.standIn({ role: 'decode' })];
  const { proxy, addr } = await h.proxy({ mode: 'layerwise', prefill: prefill.map((s) => s.url), decode: decode.map((s) => s.url) });
  return { prefill, decode, proxy, url: addr.url };
}

describe("mode 'layerwise'", () => {
  it('sends decode the metaserver, and prefill the params decode posted there', async () => {
    const { prefill, decode, url } = await layerwise();
    const r = await request(url, '/v1/completions', { body: { model: 'm', prompt: 'Hello', max_tokens: 3, stream_options: { include_usage: true } }, headers: { 'x-request-id': 'lw-1' } });
    expect(r.status).toBe(200);
    expect(r.headers['x-request-id']).toBe('lw-1');
    const d = decode[0].requests[0];
    expect(d.body?.kv_transfer_params).toEqual({ do_remote_decode: false, do_remote_prefill: true, metaserver: `${url}/v1/metaserver` });
    expect(d.body).toMatchObject({ prompt: 'Hello', max_tokens: 3 });
    // vLLM's request id is cmpl-<X-Request-Id>-0: the proxy found the request by it.
    expect(decode[0].metaserverPosts).toHaveLength(1);
    expect(decode[0].metaserverPosts[0]).toMatchObject({ status: 200 });
    expect(decode[0].metaserverPosts[0].params.request_id).toBe(`cmpl-${d.requestId}-0`);
    const p = prefill[0].requests[0];
    expect(p.requestId).toBe(d.requestId);
    expect(p.body).toMatchObject({ prompt: 'Hello', max_tokens: 1, min_tokens: 1, stream: false, kv_transfer_params: decode[0].metaserverPosts[0].params });
    expect(p.body).not.toHaveProperty('stream_options');
    const answer = json<{ choices: { text: string }[]; usage: { prompt_tokens_details: { cached_tokens: number } } }>(r);
    expect(answer.choices[0].text).toBe([0, 1, 2].map(standInToken).join(''));
    expect(answer.usage.prompt_tokens_details.cached_tokens).toBe(5);
  });

  it('streams chat answers, and waits for every child of a multi-prompt completion before one batched prefill', async () => {
    const { prefill, decode, url, proxy } = await layerwise();
    const chat = await request(url, '/v1/chat/completions', { body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, stream: true } });
    expect(chat.text).toContain('data: [DONE]');
    expect(decode[0].metaserverPosts[0].params.request_id).toMatch(/^chatcmpl-[0-9a-f-]{36}$/);

    const multi = await request(url, '/v1/completions', { body: { prompt: ['a', 'b', 'c'], max_tokens: 2 } });
    expect(multi.status).toBe(200);
    const posts = decode[0].metaserverPosts.slice(1);
    expect(posts.map((p) => p.params.request_id)).toEqual([0, 1, 2].map((i) => `cmpl-${decode[0].requests[1].requestId}-${i}`));
    expect(posts.filter((p) => JSON.parse(p.answer).status === 'waiting')).toHaveLength(2);
    expect(prefill[0].requests).toHaveLength(2); // one for the chat, one for all three prompts
    expect(prefill[0].requests[1].body?.kv_transfer_params).toEqual({
      do_remote_decode: true,
      do_remote_prefill: false,
      batch_kv_transfer_params: Object.fromEntries(posts.map((p) => [p.params.request_id, p.params])),
    });
    expect(proxy.stats().inFlight).toBe(0);
  });

  it('answers an unknown request 404 and a repeated one 409; bad bodies 400', async () => {
    const { url } = await layerwise();
    const unknown = await request(url, '/v1/metaserver', { body: { request_id: 'cmpl-00000000-0000-0000-0000-000000000000-0' } });
    expect(unknown.status).toBe(404);
    expect((await request(url, '/v1/metaserver', { body: { nothing: 1 } })).status).toBe(400);
    expect((await request(url, '/v1/metaserver', { body: '[1]' })).status).toBe(400);
    expect((await request(url, '/v1/metaserver')).status).toBe(405);
  });

  it('a prefill that fails fails the client request and aborts the waiting decode', async () => {
    const boom = { object: 'error', message: 'no KV space', code: 507 };
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 507, body: boom }) });
    const decode = await h.standIn({ role: 'decode' });
    const { url } = await layerwise({ prefill: [prefill], decode: [decode] });
    const r = await request(url, '/v1/completions', { body: { prompt: 'x', max_tokens: 2 } });
    expect(r.status).toBe(507);
    expect(json(r)).toEqual(boom);
    expect(decode.metaserverPosts[0].status).toBe(507);
    await waitFor(() => decode.requests[0].clientClosed, 'the waiting decode request to be aborted');
    expect(decode.requests[0].finished).toBe(false);
  });

  it('is refused on a wildcard address unless metaserverUrl says where decode reaches the proxy', () => {
    expect(() => createProxy({ mode: 'layerwise', host: '0.0.0.0' })).toThrow(/decode instances must reach this proxy/);
    expect(() => createProxy({ mode: 'layerwise', host: '0.0.0.0', metaserverUrl: 'http://10.0.0.1:8000/v1/metaserver' })).not.toThrow();
    expect(() => createProxy({ mode: 'layerwise', metaserverUrl: 'nope' })).toThrow(/metaserverUrl/);
  });

  it('/v1/metaserver does not exist in pull mode', async () => {
    const { addr } = await h.proxy({ prefill: [], decode: [] });
    expect((await request(addr.url, '/v1/metaserver', { body: {} })).status).toBe(404);
  });
});
