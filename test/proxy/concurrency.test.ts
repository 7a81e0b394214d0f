import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { Harness, request, type HttpResult, type StandInRequest, withCachedTokens } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

describe('1000 concurrent requests', () => {
  it('answers every one, each with the bytes its own decode request produced', async () => {
    const N = 1000;
    const prefill = [await h.standIn({ role: 'prefill' }), await h.standIn({ role: 'prefill' })];
    const decode = [await h.standIn({ role: 'decode' }), await h.standIn({ role: 'decode' })];
    const { proxy, addr } = await h.proxy({
      prefill: prefill.map((s) => s.url),
      decode: decode.map((s) => s.url),
      decodePolicy: 'least-requests',
      healthCheck: { enabled: false },
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
    h.defer(() => agent.destroy());

    const sent: Promise<HttpResult>[] = [];
    for (let i = 0; i < N; i++) {
      const chat = i % 2 === 0;
      const stream = i % 3 === 0;
      const body = chat
        ? { model: 'm', messages: [{ role: 'user', content: `question ${i}` }], max_tokens: 1 + (i % 7), stream }
        : { model: 'm', prompt: `prompt ${i}`, max_tokens: 1 + (i % 7), stream };
      sent.push(request(addr.url, chat ? '/v1/chat/completions' : '/v1/completions', { body, agent, headers: { 'x-request-id': `c-${i}` } }));
    }
    const answers = await Promise.all(sent);

    const byId = (list: readonly StandInRequest[]): Map<string, StandInRequest> => new Map(list.map((r) => [r.requestId ?? '', r]));
    const pre = byId(prefill.flatMap((s) => s.requests));
    const dec = byId(decode.flatMap((s) => s.requests));
    expect(pre.size).toBe(N);
    expect(dec.size).toBe(N);
    for (let i = 0; i < N; i++) {
      const a = answers[i];
      const id = `c-${i}`;
      expect(a.status).toBe(200);
      expect(a.headers['x-request-id']).toBe(id);
      const d = dec.get(id);
      const p = pre.get(id);
      expect(d?.finished).toBe(true);
      // Streams pass byte for byte; JSON answers get prefill's cached_tokens (0) in their usage.
      expect(a.body.equals(i % 3 === 0 ? (d?.sent ?? Buffer.alloc(0)) : withCachedTokens(d?.sent))).toBe(true);
      // The decode request carries the kv_transfer_params of this request's own prefill.
      const kv = d?.body?.kv_transfer_params as Record<string, unknown> | undefined;
      expect(kv?.remote_request_id).toBe(id);
      expect(kv?.remote_engine_id).toBe(prefill.find((s) => s.requests.includes(p as StandInRequest))?.name);
    }
    expect(prefill[0].requests.length + prefill[1].requests.length).toBe(N);
    expect(prefill[0].requests.length).toBe(N / 2); // round-robin
    const s = proxy.stats();
    expect(s.inFlight).toBe(0);
    expect(s.retries).toEqual({ prefill: 0, decode: 0 });
    expect((s.requests['/v1/completions 200'] ?? 0) + (s.requests['/v1/chat/completions 200'] ?? 0)).toBe(N);
    expect([...s.instances.prefill, ...s.instances.decode].every((i) => i.inFlight === 0 && i.inFlightTokens === 0)).toBe(true);
  });
});
