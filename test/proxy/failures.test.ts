import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { Harness, closedPort, json, request, waitFor } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

type ErrorAnswer = { error: { message: string; type: string; code: number } };

describe('instance down', () => {
  it('retries a refused prefill connection on another prefill instance', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [dead, prefill.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 3 } });
    expect(r.status).toBe(200);
    expect(prefill.requests).toHaveLength(1);
    expect(decode.requests).toHaveLength(1);
    const s = proxy.stats();
    expect(s.retries).toEqual({ prefill: 1, decode: 0 });
    expect(s.instances.prefill.find((i) => i.url === `http://${dead}`)?.connectFailures).toBe(1);
    expect(s.instances.prefill.every((i) => i.inFlight === 0)).toBe(true);
  });

  it('retries a refused decode connection on another decode instance', async () => {
    const dead = `http://127.0.0.1:${await closedPort()}`;
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [dead, decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a', stream: true } });
    expect(r.status).toBe(200);
    expect(r.body.equals(decode.requests[0].sent ?? Buffer.alloc(0))).toBe(true);
    expect(proxy.stats().retries).toEqual({ prefill: 0, decode: 1 });
  });

  it('gives up after maxRetries + 1 attempts with a 502 and never calls decode', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [dead], decode: [decode.url], retries: { maxRetries: 2, baseDelayMs: 0 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(502);
    expect(json<ErrorAnswer>(r).error.message).toMatch(/every attempt to reach a prefill instance failed \(3 attempts\)/);
    expect(r.headers['x-request-id']).toBeTypeOf('string');
    expect(decode.requests).toHaveLength(0);
    expect(proxy.stats().instances.prefill[0].connectFailures).toBe(3);
  });

  it('retries a connection dropped before any response byte', async () => {
    let n = 0;
    const prefill = await h.standIn({ role: 'prefill', behavior: () => (n++ === 0 ? { kind: 'destroy' } : undefined) });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(200);
    expect(prefill.requests).toHaveLength(2);
    expect(prefill.requests[1].body).toEqual(prefill.requests[0].body);
    expect(proxy.stats().retries.prefill).toBe(1);
  });
});

describe('HTTP errors: retried except 400, as vllm-ascend; the last answer is forwarded', () => {
  const boom = { object: 'error', message: 'engine dead', type: 'InternalServerError', code: 500 };

  it('retries a prefill 500 on the other instance, then forwards the last answer without calling decode', async () => {
    const a = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 500, body: boom }) });
    const b = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 500, body: boom }) });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [a.url, b.url], decode: [decode.url], retries: { maxRetries: 2 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' }, headers: { 'x-request-id': 'r500' } });
    expect(r.status).toBe(500);
    expect(json(r)).toEqual(boom);
    expect(r.headers['x-request-id']).toBe('r500');
    expect(a.requests.length + b.requests.length).toBe(3); // 1 + maxRetries, bounded
    expect(a.requests.length).toBeGreaterThan(0);
    expect(b.requests.length).toBeGreaterThan(0);
    expect(decode.requests).toHaveLength(0);
    expect(proxy.stats().retries.prefill).toBe(2);
    // An instance that answers is alive: HTTP errors do not eject it.
    expect(proxy.instances('prefill').every((i) => i.healthy && i.connectFailures === 0)).toBe(true);
  });

  it('a prefill 503 on one instance is retried on the next, and the request succeeds', async () => {
    const a = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 503, body: boom }) });
    const b = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [a.url, b.url], decode: [decode.url], policy: 'round-robin' });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 2 } });
    expect(r.status).toBe(200);
    expect(a.requests).toHaveLength(1);
    expect(b.requests).toHaveLength(1);
    expect(decode.requests).toHaveLength(1);
    expect(decode.requests[0].body?.kv_transfer_params).toMatchObject({ remote_engine_id: b.name });
  });

  it('never retries a 400', async () => {
    const bad = { object: 'error', message: 'max_tokens too large', type: 'BadRequestError', code: 400 };
    const a = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 400, body: bad }) });
    const b = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 400, body: bad }) });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [a.url, b.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(400);
    expect(json(r)).toEqual(bad);
    expect(a.requests.length + b.requests.length).toBe(1);
    expect(decode.requests).toHaveLength(0);
  });

  it('retries a decode 500 on the other decode instance, then forwards the last answer as it was', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const d1 = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'status', status: 500, body: 'decode broke', contentType: 'text/plain' }) });
    const d2 = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'status', status: 500, body: 'decode broke', contentType: 'text/plain' }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [d1.url, d2.url], retries: { maxRetries: 1 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(500);
    expect(r.text).toBe('decode broke');
    expect(r.headers['content-type']).toBe('text/plain');
    expect(d1.requests).toHaveLength(1);
    expect(d2.requests).toHaveLength(1);
    expect(prefill.requests).toHaveLength(1); // the KV is where it was: only decode is tried again
    expect(proxy.stats().retries.decode).toBe(1);
  });

  it('with retries.onHttpError false, forwards an HTTP error at once (the earlier behaviour)', async () => {
    const a = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 500, body: boom }) });
    const b = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 500, body: boom }) });
    const p2 = await h.standIn({ role: 'prefill' });
    const d1 = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'status', status: 502, body: 'bad gateway', contentType: 'text/plain' }) });
    const d2 = await h.standIn({ role: 'decode' });
    const first = await h.proxy({ prefill: [a.url, b.url], decode: [d2.url], retries: { onHttpError: false } });
    const r1 = await request(first.addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r1.status).toBe(500);
    expect(a.requests.length + b.requests.length).toBe(1);
    expect(first.proxy.stats().retries.prefill).toBe(0);
    const second = await h.proxy({ prefill: [p2.url], decode: [d1.url, d2.url], decodePolicy: 'round-robin', retries: { onHttpError: false } });
    const r2 = await request(second.addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r2.status).toBe(502);
    expect(r2.text).toBe('bad gateway');
    expect(d1.requests).toHaveLength(1);
    expect(d2.requests).toHaveLength(0);
  });

  it('answers 502 when prefill returns something that is not JSON', async () => {
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 200, body: '<html>', contentType: 'text/html' }) });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(502);
    expect(json<ErrorAnswer>(r).error.message).toMatch(/not JSON/);
    expect(decode.requests).toHaveLength(0);
  });
});

describe('timeouts', () => {
  it('answers 504 when prefill does not answer in time, and aborts the prefill request', async () => {
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'hang' }) });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], timeouts: { prefillMs: 100 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(504);
    expect(json<ErrorAnswer>(r).error.type).toBe('timeout_error');
    await waitFor(() => prefill.requests[0]?.clientClosed === true, 'the prefill request to be aborted');
    expect(prefill.requests).toHaveLength(1); // a timeout is not retried
    expect(decode.requests).toHaveLength(0);
    expect(proxy.stats().timeouts.prefill).toBe(1);
    expect(proxy.stats().instances.prefill[0].inFlight).toBe(0);
  });

  it('answers 504 when decode sends nothing in time', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'hang' }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], timeouts: { decodeIdleMs: 100 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    expect(r.status).toBe(504);
    await waitFor(() => decode.requests[0]?.clientClosed === true, 'the decode request to be aborted');
    expect(proxy.stats().timeouts.decode).toBe(1);
  });

  it('cuts the client stream when decode stalls mid-stream', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'stall', events: 3 }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], timeouts: { decodeIdleMs: 300 } });
    const got = await new Promise<{ status: number; bytes: Buffer; error: boolean }>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const req = http.request(new URL('/v1/completions', addr.url), { method: 'POST', headers: { 'content-type': 'application/json' }, agent: false }, (res) => {
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', () => resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(chunks), error: true }));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(chunks), error: false }));
      });
      req.on('error', reject);
      req.end(JSON.stringify({ prompt: 'a', stream: true, max_tokens: 10 }));
    });
    expect(got.status).toBe(200);
    expect(got.error).toBe(true);
    await waitFor(() => decode.requests[0]?.clientClosed === true, 'the decode request to be aborted');
    // Everything decode sent before it stalled reached the client, unchanged, and nothing else.
    expect(got.bytes.equals(decode.requests[0].sent ?? Buffer.alloc(1))).toBe(true);
    expect(got.bytes.toString()).not.toContain('[DONE]');
    expect(proxy.stats().timeouts.decode).toBe(1);
    expect(proxy.stats().clientAborts).toBe(0);
  });
});

describe('client abort', () => {
  function startAndAbortWhen(url: string, body: unknown, ready: () => boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req = http.request(new URL('/v1/completions', url), { method: 'POST', headers: { 'content-type': 'application/json' }, agent: false });
      req.on('error', () => {});
      req.on('close', () => resolve());
      req.on('response', (res) => res.on('data', () => {}).on('error', () => {}));
      req.end(JSON.stringify(body));
      waitFor(ready, 'the upstream to receive the request').then(() => req.destroy(), reject);
    });
  }

  it('aborts the prefill request when the client disconnects during prefill', async () => {
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'hang' }) });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    await startAndAbortWhen(addr.url, { prompt: 'a' }, () => prefill.requests.length === 1);
    await waitFor(() => prefill.requests[0].clientClosed, 'the prefill request to be aborted');
    await waitFor(() => proxy.stats().inFlight === 0, 'the proxy to finish the request');
    expect(decode.requests).toHaveLength(0);
    const s = proxy.stats();
    expect(s.clientAborts).toBe(1);
    expect(s.requests['/v1/completions 499']).toBe(1);
    expect(s.instances.prefill[0].inFlight).toBe(0);
  });

  it('aborts the decode request when the client disconnects mid-stream', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'stall', events: 2 }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    await startAndAbortWhen(addr.url, { prompt: 'a', stream: true, max_tokens: 50 }, () => decode.requests.length === 1 && decode.requests[0].bytesSent > 0);
    await waitFor(() => decode.requests[0].clientClosed, 'the decode request to be aborted');
    await waitFor(() => proxy.stats().inFlight === 0, 'the proxy to finish the request');
    expect(prefill.requests[0].finished).toBe(true);
    const s = proxy.stats();
    expect(s.clientAborts).toBe(1);
    expect(s.instances.decode[0].inFlight).toBe(0);
    expect(s.instances.decode[0].inFlightTokens).toBe(0);
  });
});
