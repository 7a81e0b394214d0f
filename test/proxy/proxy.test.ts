import { createHash } from 'node:crypto';
import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { Harness, json, request, standInToken, waitFor, withCachedTokens, type StandIn } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

async function pd(): Promise<{ prefill: StandIn; decode: StandIn; url: string }> {
  const prefill = await h.standIn({ role: 'prefill' });
  const decode = await h.standIn({ role: 'decode' });
  const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
  return { prefill, decode, url: addr.url };
}

describe('completions through the proxy', () => {
  it('rewrites the prefill request and passes its kv_transfer_params to decode (non-streaming)', async () => {
    const { prefill, decode, url } = await pd();
    const client = { model: 'm', prompt: 'Hello there', max_tokens: 5, temperature: 0, stream_options: { include_usage: true } };
    const r = await request(url, '/v1/completions', { body: client, headers: { authorization: 'Bearer sk-client', 'x-request-id': 'req-1' } });
    expect(r.status).toBe(200);

    expect(prefill.requests).toHaveLength(1);
    const p = prefill.requests[0];
    expect(p.path).toBe('/v1/completions');
    expect(p.body).toEqual({
      model: 'm',
      prompt: 'Hello there',
      max_tokens: 1,
      min_tokens: 1,
      temperature: 0,
      stream: false,
      kv_transfer_params: {
        do_remote_decode: true,
        do_remote_prefill: false,
        remote_engine_id: null,
        remote_block_ids: null,
        remote_host: null,
        remote_port: null,
      },
    });
    expect(p.headers.authorization).toBe('Bearer sk-client');
    expect(p.headers['x-request-id']).toBe('req-1');

    expect(decode.requests).toHaveLength(1);
    const d = decode.requests[0];
    const prefillAnswer = JSON.parse(p.sent?.toString('utf8') ?? '{}') as { kv_transfer_params: Record<string, unknown> };
    expect(prefillAnswer.kv_transfer_params.do_remote_prefill).toBe(true);
    expect(d.body).toEqual({ ...client, kv_transfer_params: prefillAnswer.kv_transfer_params });
    expect(d.headers.authorization).toBe('Bearer sk-client');
    expect(d.headers['x-request-id']).toBe('req-1');

    // The client gets decode's answer (with prefill's cached_tokens, 0 here) and the request id.
    expect(r.text).toBe(withCachedTokens(d.sent, 0).toString());
    expect(r.headers['x-request-id']).toBe('req-1');
    expect(r.headers['content-type']).toBe('application/json');
    const answer = json<{ choices: { text: string }[] }>(r);
    expect(answer.choices[0].text).toBe([0, 1, 2, 3, 4].map(standInToken).join(''));
  });

  it('caps max_completion_tokens and min_tokens for chat and generates one request id for both sides', async () => {
    const { prefill, decode, url } = await pd();
    const client = {
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      max_completion_tokens: 7,
      min_tokens: 3,
      stream: true,
      stream_options: { include_usage: true },
    };
    const r = await request(url, '/v1/chat/completions', { body: client });
    expect(r.status).toBe(200);
    const p = prefill.requests[0];
    expect(p.path).toBe('/v1/chat/completions');
    expect(p.body?.max_tokens).toBe(1);
    expect(p.body?.max_completion_tokens).toBe(1);
    expect(p.body?.min_tokens).toBe(1);
    expect(p.body?.stream).toBe(false);
    expect(p.body).not.toHaveProperty('stream_options');
    const d = decode.requests[0];
    expect(d.body?.max_completion_tokens).toBe(7);
    expect(d.body?.min_tokens).toBe(3);
    expect(d.body?.stream).toBe(true);
    expect(d.body?.stream_options).toEqual({ include_usage: true });
    const rid = p.requestId;
    expect(rid).toMatch(/^[0-9a-f-]{36}$/);
    expect(d.requestId).toBe(rid);
    expect(r.headers['x-request-id']).toBe(rid);
  });

  it('passes an SSE stream through byte for byte, chunk boundaries inside UTF-8 characters included', async () => {
    const { decode, url } = await pd();
    const r = await request(url, '/v1/completions', { body: { model: 'm', prompt: 'p', max_tokens: 40, stream: true } });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const d = decode.requests[0];
    expect(d.finished).toBe(true);
    expect(r.body.equals(d.sent ?? Buffer.alloc(0))).toBe(true);
    const events = r.text.split('\n\n').filter((e) => e !== '');
    expect(events).toHaveLength(41);
    expect(events[40]).toBe('data: [DONE]');
    const text = events.slice(0, 40).map((e) => (JSON.parse(e.slice(6)) as { choices: { text: string }[] }).choices[0].text).join('');
    expect(text).toBe(Array.from({ length: 40 }, (_, i) => standInToken(i)).join(''));
  });

  it('streams with backpressure: a client that stops reading stops the decode instance too', async () => {
    const total = 64 * 1024 * 1024;
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'bulk', totalBytes: total }) });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });

    const hash = createHash('sha256');
    let received = 0;
    let res!: http.IncomingMessage;
    await new Promise<void>((resolve, reject) => {
      const req = http.request(new URL('/v1/completions', addr.url), { method: 'POST', headers: { 'content-type': 'application/json' }, agent: false }, (r) => {
        res = r;
        r.pause();
        resolve();
      });
      req.on('error', reject);
      req.end(JSON.stringify({ model: 'm', prompt: 'p' }));
    });
    // Read one chunk, then stop reading until the decode stand-in is blocked on its socket.
    await waitFor(() => decode.requests.length === 1 && decode.requests[0].blockedOnDrain, 'decode to block on backpressure');
    const sentWhileBlocked = decode.requests[0].bytesSent;
    expect(sentWhileBlocked).toBeLessThan(total / 2);
    await new Promise<void>((resolve, reject) => {
      res.on('data', (c: Buffer) => {
        received += c.length;
        hash.update(c);
      });
      res.on('end', resolve);
      res.on('error', reject);
      res.resume();
    });
    expect(received).toBe(total);
    await waitFor(() => decode.requests[0].finished, 'decode to finish');
    expect(hash.digest('hex')).toBe(decode.requests[0].sha256);
  });

  it("sends the api key upstream on every request, as vllm-ascend does (authorization: 'api-key')", async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], apiKey: 'sk-proxy' });
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' }, headers: { authorization: 'Bearer mine', 'openai-organization': 'org-1' } });
    expect(prefill.requests.map((r) => r.headers.authorization)).toEqual(['Bearer sk-proxy', 'Bearer sk-proxy']);
    expect(decode.requests.map((r) => r.headers.authorization)).toEqual(['Bearer sk-proxy', 'Bearer sk-proxy']);
    expect(decode.requests[1].headers['openai-organization']).toBe('org-1');
  });

  it("with authorization: 'client', passes the client's Authorization and sends the key only when there is none", async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], apiKey: 'sk-proxy', authorization: 'client' });
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' }, headers: { authorization: 'Bearer mine' } });
    expect(prefill.requests.map((r) => r.headers.authorization)).toEqual(['Bearer sk-proxy', 'Bearer mine']);
    expect(decode.requests.map((r) => r.headers.authorization)).toEqual(['Bearer sk-proxy', 'Bearer mine']);
  });

  it('leaves the decode request alone when prefill returns no kv_transfer_params', async () => {
    const prefill = await h.standIn({
      role: 'prefill',
      behavior: () => ({ kind: 'status', status: 200, body: { id: 'x', choices: [{ text: 'a' }] } }),
    });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 2 } });
    expect(r.status).toBe(200);
    expect(decode.requests[0].body).toEqual({ prompt: 'a', max_tokens: 2 });
  });
});

describe('other endpoints', () => {
  it('serves /v1/models from a decode instance', async () => {
    const { url } = await pd();
    const r = await request(url, '/v1/models');
    expect(r.status).toBe(200);
    expect(json<{ data: { id: string }[] }>(r).data[0].id).toBe('stand-in-model');
  });

  it('reports /healthcheck with instance counts', async () => {
    const { url } = await pd();
    const r = await request(url, '/healthcheck');
    expect(r.status).toBe(200);
    expect(json(r)).toEqual({ status: 'ok', prefill: { healthy: 1, total: 1 }, decode: { healthy: 1, total: 1 }, in_flight: 0 });
  });

  it('answers 503 on /healthcheck when a role has no instance', async () => {
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [], decode: [decode.url] });
    const r = await request(addr.url, '/healthcheck');
    expect(r.status).toBe(503);
    expect(json(r).status).toBe('unavailable');
    const c = await request(addr.url, '/v1/completions', { body: { prompt: 'x' } });
    expect(c.status).toBe(503);
    expect(json<{ error: { message: string } }>(c).error.message).toBe('no prefill instance is available');
  });

  it('exposes Prometheus metrics', async () => {
    const { url, prefill, decode } = await pd();
    await request(url, '/v1/completions', { body: { prompt: 'a' } });
    await request(url, '/v1/completions', { body: 'not json' });
    const r = await request(url, '/metrics');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    const m = r.text;
    expect(m).toContain('mooncake_proxy_requests_total{endpoint="/v1/completions",status="200"} 1');
    expect(m).toContain('mooncake_proxy_requests_total{endpoint="/v1/completions",status="400"} 1');
    expect(m).toContain('mooncake_proxy_requests_in_flight 0');
    expect(m).toContain('mooncake_proxy_request_duration_seconds_count{endpoint="/v1/completions"} 2');
    expect(m).toContain('mooncake_proxy_request_duration_seconds_bucket{endpoint="/v1/completions",le="+Inf"} 2');
    expect(m).toContain(`mooncake_proxy_upstream_healthy{role="prefill",instance="${prefill.url}"} 1`);
    expect(m).toContain(`mooncake_proxy_upstream_in_flight{role="decode",instance="${decode.url}"} 0`);
    expect(m).toContain(`mooncake_proxy_upstream_requests_total{role="decode",instance="${decode.url}"} 1`);
    expect(m).toContain('mooncake_proxy_prefill_duration_seconds_count 1');
    // Every sample line is `name{labels} value` or `name value`.
    for (const line of m.trim().split('\n')) {
      if (!line.startsWith('#')) expect(line).toMatch(/^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$|^[a-z_]+(\{[^}]*\})? \+Inf$/);
    }
  });

  it('rejects bad requests with clear 4xx answers and never calls an instance', async () => {
    const { url, prefill, decode } = await pd();
    const bad = await request(url, '/v1/completions', { body: '{"prompt": ' });
    expect(bad.status).toBe(400);
    expect(json<{ error: { message: string; type: string } }>(bad).error).toMatchObject({ message: 'request body is not valid JSON', type: 'invalid_request_error' });
    expect((await request(url, '/v1/completions', { body: '[1,2]' })).status).toBe(400);
    const get = await request(url, '/v1/completions');
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    expect((await request(url, '/nope')).status).toBe(404);
    expect((await request(url, '/metrics', { method: 'POST', body: {} })).status).toBe(405);
    expect(prefill.requests).toHaveLength(0);
    expect(decode.requests).toHaveLength(0);
  });

  it('answers 413 for a body over maxBodyBytes', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], maxBodyBytes: 1000 });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'x'.repeat(2000) }, agent: false });
    expect(r.status).toBe(413);
    expect(prefill.requests).toHaveLength(0);
  });
});
