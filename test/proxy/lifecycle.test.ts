import { afterEach, describe, expect, it } from 'vitest';
import { createProxy, type ProxyLogLevel } from '../../lib/proxy';
import { Harness, request, waitFor } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

describe('close()', () => {
  it('lets in-flight requests finish within the grace period and refuses new connections', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'gate', until: gate }) });
    const proxy = createProxy({ port: 0, prefill: [prefill.url], decode: [decode.url], shutdownGraceMs: 60_000 });
    h.defer(() => proxy.close({ graceMs: 0 }));
    const addr = await proxy.listen();
    const pending = request(addr.url, '/v1/completions', { body: { prompt: 'a', stream: true, max_tokens: 3 }, agent: false });
    await waitFor(() => decode.requests.length === 1, 'the request to reach decode');
    const closed = proxy.close();
    expect(proxy.address()).toBeUndefined();
    await expect(request(addr.url, '/healthcheck', { agent: false })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    release();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.body.equals(decode.requests[0].sent ?? Buffer.alloc(0))).toBe(true);
    await closed;
  });

  it('cuts in-flight requests after the grace period and aborts their upstream requests', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'hang' }) });
    const proxy = createProxy({ port: 0, prefill: [prefill.url], decode: [decode.url], shutdownGraceMs: 3_600_000 });
    const addr = await proxy.listen();
    const pending = request(addr.url, '/v1/completions', { body: { prompt: 'a' }, agent: false }).then(
      (r) => r.status,
      () => 'cut',
    );
    await waitFor(() => decode.requests.length === 1, 'the request to reach decode');
    const closed = proxy.close(); // an hour of grace...
    await proxy.close({ graceMs: 0 }); // ...cut short by a second close, like a second Ctrl-C
    await closed;
    expect(await pending).toBe('cut');
    await waitFor(() => decode.requests[0].clientClosed, 'the decode request to be aborted');
  });

  it('logs each completion at debug level with the instances it used', async () => {
    const lines: { level: ProxyLogLevel; message: string; fields?: Readonly<Record<string, unknown>> }[] = [];
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], log: (level, message, fields) => lines.push({ level, message, fields }) });
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' }, headers: { 'x-request-id': 'dbg-1', 'content-type': 'text/plain' } });
    await waitFor(() => lines.some((l) => l.level === 'debug'), 'the debug line');
    const line = lines.find((l) => l.level === 'debug');
    expect(line?.message).toMatch(/^\/v1\/completions 200 in [\d.]+ ms$/);
    expect(line?.fields).toEqual({ requestId: 'dbg-1', prefill: prefill.url, decode: decode.url });
    expect(lines.some((l) => l.level === 'info' && l.message.startsWith('proxy listening on'))).toBe(true);
    // The proxy re-serialises the body, so upstreams always get JSON.
    expect(prefill.requests[0].headers['content-type']).toBe('application/json');
    expect(decode.requests[0].headers['content-type']).toBe('application/json');
  });
});
