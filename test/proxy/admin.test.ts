import { afterEach, describe, expect, it } from 'vitest';
import { isMooncakeError } from '../../lib/errors';
import { Harness, json, request, waitFor, withCachedTokens } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

type Listing = { prefill: { url: string; healthy: boolean }[]; decode: { url: string; healthy: boolean }[] };
type ErrorAnswer = { error: { message: string } };

describe('admin API', () => {
  it('lists, adds and removes instances at run time, and traffic follows', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const d1 = await h.standIn({ role: 'decode' });
    const d2 = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [d1.url], healthCheck: { intervalMs: 3_600_000 } });

    const list = json<Listing>(await request(addr.url, '/admin/instances'));
    expect(list.prefill.map((i) => i.url)).toEqual([prefill.url]);
    expect(list.decode.map((i) => i.url)).toEqual([d1.url]);

    const add = await request(addr.url, '/admin/instances', { body: { role: 'decode', url: `127.0.0.1:${d2.port}` } });
    expect(add.status).toBe(201);
    expect(json<{ added: { url: string; role: string; healthy: boolean }[] }>(add).added).toMatchObject([{ url: d2.url, role: 'decode', healthy: true }]);
    await waitFor(() => d2.healthChecks === 1, 'the new instance to be probed right away');
    for (let i = 0; i < 4; i++) await request(addr.url, '/v1/completions', { body: { prompt: `${i}` } });
    expect(d1.requests).toHaveLength(2);
    expect(d2.requests).toHaveLength(2);

    const del = await request(addr.url, '/admin/instances', { method: 'DELETE', body: { role: 'decode', url: d1.url } });
    expect(del.status).toBe(200);
    expect(json(del)).toEqual({ removed: [d1.url] });
    for (let i = 0; i < 3; i++) await request(addr.url, '/v1/completions', { body: { prompt: `${i}` } });
    expect(d1.requests).toHaveLength(2);
    expect(d2.requests).toHaveLength(5);
    expect(json<Listing>(await request(addr.url, '/admin/instances')).decode.map((i) => i.url)).toEqual([d2.url]);
  });

  it("accepts vllm-ascend's {type, instances} shape and DELETE with a query string", async () => {
    const { addr, proxy } = await h.proxy({ prefill: [], decode: [], healthCheck: { enabled: false } });
    const add = await request(addr.url, '/admin/instances', { body: { type: 'prefill', instances: ['10.0.0.1:8100', '10.0.0.2:8100'] } });
    expect(add.status).toBe(201);
    expect(proxy.instances('prefill').map((i) => i.url)).toEqual(['http://10.0.0.1:8100', 'http://10.0.0.2:8100']);
    const del = await request(addr.url, `/admin/instances?role=prefill&url=${encodeURIComponent('http://10.0.0.1:8100')}`, { method: 'DELETE' });
    expect(del.status).toBe(200);
    expect(proxy.instances('prefill').map((i) => i.url)).toEqual(['http://10.0.0.2:8100']);
  });

  it('answers clear 4xx errors and changes nothing on a bad request', async () => {
    const { addr, proxy } = await h.proxy({ prefill: ['127.0.0.1:8100'], decode: [], healthCheck: { enabled: false } });
    const cases: [string, unknown, number, RegExp][] = [
      ['POST', { role: 'router', url: '127.0.0.1:1' }, 400, /"role" must be "prefill" or "decode", got "router"/],
      ['POST', { role: 'decode' }, 400, /give "url"/],
      ['POST', { role: 'decode', url: 'https://127.0.0.1:1' }, 400, /only http:\/\//],
      ['POST', { role: 'decode', url: '127.0.0.1' }, 400, /a port is required/],
      ['POST', { role: 'decode', instances: ['127.0.0.1:1', '127.0.0.1:1'] }, 409, /already present: http:\/\/127.0.0.1:1/],
      ['POST', { role: 'prefill', url: 'http://127.0.0.1:8100/' }, 409, /already present/],
      ['DELETE', { role: 'decode', url: '127.0.0.1:9' }, 404, /not present: http:\/\/127.0.0.1:9/],
      ['POST', '{"role":', 400, /not valid JSON/],
      ['PUT', { role: 'decode', url: '127.0.0.1:1' }, 405, /use GET, POST, DELETE/],
    ];
    for (const [method, body, status, message] of cases) {
      const r = await request(addr.url, '/admin/instances', { method, body });
      expect(r.status, `${method} ${JSON.stringify(body)}`).toBe(status);
      expect(json<ErrorAnswer>(r).error.message).toMatch(message);
    }
    expect(proxy.instances().map((i) => i.url)).toEqual(['http://127.0.0.1:8100']);
  });

  it('requires the admin token when one is set', async () => {
    const { addr } = await h.proxy({ prefill: [], decode: [], adminToken: 's3cret', healthCheck: { enabled: false } });
    expect((await request(addr.url, '/admin/instances')).status).toBe(401);
    expect((await request(addr.url, '/admin/instances', { headers: { authorization: 'Bearer nope' } })).status).toBe(401);
    expect((await request(addr.url, '/admin/instances', { headers: { authorization: 'Bearer s3cret' } })).status).toBe(200);
    expect((await request(addr.url, '/admin/instances', { headers: { 'x-admin-token': 's3cret' } })).status).toBe(200);
  });

  it('can be turned off', async () => {
    const { addr } = await h.proxy({ prefill: [], decode: [], admin: false, healthCheck: { enabled: false } });
    expect((await request(addr.url, '/admin/instances')).status).toBe(404);
  });

  it('addInstance/removeInstance work programmatically; a removed instance finishes its requests', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'gate', until: gate }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [], healthCheck: { enabled: false } });
    expect(proxy.addInstance('decode', decode.url)).toMatchObject({ role: 'decode', url: decode.url, healthy: true, inFlight: 0 });
    expect(() => proxy.addInstance('decode', decode.url)).toThrow(/already in the pool/);
    try {
      proxy.addInstance('decode', 'nonsense');
      expect.unreachable();
    } catch (e) {
      expect(isMooncakeError(e, 'INVALID_CONFIG')).toBe(true);
    }
    const pending = request(addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 2 } });
    await waitFor(() => decode.requests.length === 1, 'the request to reach decode');
    expect(proxy.removeInstance('decode', decode.url)).toBe(true);
    expect(proxy.removeInstance('decode', decode.url)).toBe(false);
    release();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.text).toBe(withCachedTokens(decode.requests[0].sent).toString());
    expect((await request(addr.url, '/v1/completions', { body: { prompt: 'a' } })).status).toBe(503);
  });
});
