import { afterEach, describe, expect, it } from 'vitest';
import { Harness, closedPort, request, startStandIn, waitFor } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

const fast = { intervalMs: 10, timeoutMs: 2000, unhealthyThreshold: 2, healthyThreshold: 2 };

describe('health checks', () => {
  it('ejects an instance whose /health fails, sends nothing to it, and brings it back', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const d1 = await h.standIn({ role: 'decode' });
    const d2 = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [d1.url, d2.url], healthCheck: fast });
    const healthyOf = (url: string): boolean | undefined => proxy.instances('decode').find((i) => i.url === url)?.healthy;

    d1.healthy = false;
    await waitFor(() => healthyOf(d1.url) === false, 'd1 to be ejected');
    expect(proxy.instances('decode').find((i) => i.url === d1.url)?.ejections).toBe(1);
    const before = d1.requests.length;
    for (let i = 0; i < 10; i++) expect((await request(addr.url, '/v1/completions', { body: { prompt: `${i}` } })).status).toBe(200);
    expect(d1.requests.length).toBe(before);
    expect(d2.requests.length).toBe(10);
    const m = (await request(addr.url, '/metrics')).text;
    expect(m).toContain(`mooncake_proxy_upstream_healthy{role="decode",instance="${d1.url}"} 0`);
    expect(m).toContain(`mooncake_proxy_upstream_ejections_total{role="decode",instance="${d1.url}"} 1`);

    d1.healthy = true;
    await waitFor(() => healthyOf(d1.url) === true, 'd1 to be re-admitted');
    for (let i = 0; i < 4; i++) expect((await request(addr.url, '/v1/completions', { body: { prompt: `${i}` } })).status).toBe(200);
    expect(d1.requests.length).toBe(2); // round-robin again
    expect(d2.requests.length).toBe(12);
  });

  it('re-admits an instance that went down and came back on the same port', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const d1 = await startStandIn({ role: 'decode' });
    const port = d1.port;
    const d2 = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [d1.url, d2.url], healthCheck: fast });
    await d1.close();
    await waitFor(() => proxy.instances('decode')[0].healthy === false, 'the stopped instance to be ejected');
    expect((await request(addr.url, '/v1/completions', { body: { prompt: 'x' } })).status).toBe(200);
    expect(proxy.stats().retries.decode).toBe(0); // the ejected instance was not even tried

    const back = await h.standIn({ role: 'decode', port });
    await waitFor(() => proxy.instances('decode')[0].healthy, 'the restarted instance to be re-admitted');
    await request(addr.url, '/v1/completions', { body: { prompt: 'a' } });
    await request(addr.url, '/v1/completions', { body: { prompt: 'b' } });
    expect(back.requests.length).toBe(1);
  });

  it('ejects on connection failures seen by requests, without waiting for a probe', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({
      prefill: [dead, prefill.url],
      decode: [decode.url],
      healthCheck: { intervalMs: 3_600_000, unhealthyThreshold: 1 },
    });
    for (let i = 0; i < 6; i++) expect((await request(addr.url, '/v1/completions', { body: { prompt: `${i}` } })).status).toBe(200);
    const deadState = proxy.instances('prefill')[0];
    expect(deadState.healthy).toBe(false);
    expect(deadState.connectFailures).toBe(1); // tried once, then never again
    expect(proxy.stats().retries.prefill).toBe(1);
    expect(prefill.requests).toHaveLength(6);
  });

  it('still routes to ejected instances when no healthy one is left', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    decode.healthy = false; // /health fails but completions work
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], healthCheck: fast });
    await waitFor(() => proxy.instances('decode')[0].healthy === false, 'decode to be ejected');
    expect((await request(addr.url, '/healthcheck')).status).toBe(503);
    expect((await request(addr.url, '/v1/completions', { body: { prompt: 'x' } })).status).toBe(200);
  });

  it('probes with the configured path, and checkHealth() runs a round on demand', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy } = await h.proxy({
      prefill: [prefill.url],
      decode: [decode.url],
      healthCheck: { path: '/v1/models', intervalMs: 3_600_000, unhealthyThreshold: 1 },
    });
    await proxy.checkHealth();
    expect(prefill.healthChecks).toBe(0); // /v1/models, not /health
    expect(proxy.instances().every((i) => i.healthy && i.consecutiveSuccesses === 1)).toBe(true);
  });

  it('does not eject anything when health checks are off', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const { proxy, addr } = await h.proxy({ prefill: [dead, prefill.url], decode: [decode.url], healthCheck: { enabled: false, unhealthyThreshold: 1 } });
    for (let i = 0; i < 4; i++) expect((await request(addr.url, '/v1/completions', { body: { prompt: 'x' } })).status).toBe(200);
    expect(proxy.instances('prefill')[0].healthy).toBe(true);
    expect(prefill.healthChecks + decode.healthChecks).toBe(0);
  });
});
