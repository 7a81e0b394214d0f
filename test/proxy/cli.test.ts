import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { runProxyBench, runProxyBenchCommand, runProxyCommand, type ProxyAddress } from '../../lib/proxy';
import { Harness, json, request } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

function sink(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('runProxyCommand', () => {
  it('prints usage for --help', async () => {
    const out = sink();
    await runProxyCommand(['--help'], { stdout: out.stream });
    expect(out.text()).toMatch(/^Usage: mooncake-node proxy/);
    expect(out.text()).toContain('--prefiller-hosts | --prefiller-host H [H ...]');
  });

  it('rejects bad flags with INVALID_CONFIG before listening', async () => {
    await expect(runProxyCommand(['--decoder-ports', '8200', '8201'])).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringMatching(/--decoder-hosts has 1 value/) });
  });

  it("serves with the guide's flags until stopped, then closes cleanly", async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const out = sink();
    const err = sink();
    const stop = new AbortController();
    const sigintBefore = process.listenerCount('SIGINT');
    let address: ProxyAddress | undefined;
    const running = runProxyCommand(
      ['--host', '127.0.0.1', '--port', '0', '--prefiller-hosts', '127.0.0.1', '--prefiller-ports', String(prefill.port), '--decoder-hosts', '127.0.0.1', '--decoder-ports', String(decode.port), '--log-level', 'debug'],
      {
        stdout: out.stream,
        stderr: err.stream,
        signal: stop.signal,
        onListening: (a) => {
          address = a;
        },
      },
    );
    for (let i = 0; i < 500 && address === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    if (address === undefined) throw new Error('the proxy did not start');
    expect(process.listenerCount('SIGINT')).toBe(sigintBefore + 1);
    const r = await request(address.url, '/v1/completions', { body: { prompt: 'hi', max_tokens: 2 } });
    expect(r.status).toBe(200);
    expect(json(r).id).toMatch(/^cmpl-decode-/);
    stop.abort();
    await running;
    expect(process.listenerCount('SIGINT')).toBe(sigintBefore);
    expect(out.text()).toBe(`mooncake-node proxy listening on ${address.url}\n`);
    expect(err.text()).toContain('aborted: shutting down');
    expect(err.text()).toContain('proxy closed');
    await expect(request(address.url, '/healthcheck', { agent: false })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('fails with the address when the port is taken', async () => {
    const { addr } = await h.proxy({ prefill: [], decode: [], healthCheck: { enabled: false } });
    await expect(runProxyCommand(['--port', String(addr.port), '--log-level', 'silent'], { handleSignals: false })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });
});

describe('proxy benchmark (smoke run, no timing assertions)', () => {
  it('measures direct and proxied latency with autocannon', async () => {
    const r = await runProxyBench({ connections: 2, durationSec: 1, warmupSec: 0, rounds: 1, isolate: false });
    expect(r.isolated).toBe(false);
    for (const s of [r.direct, r.proxied]) {
      expect(s.requests).toBeGreaterThan(0);
      expect(s.errors).toBe(0);
      expect(s.non2xx).toBe(0);
      expect(Number.isFinite(s.p50) && Number.isFinite(s.p99)).toBe(true);
    }
    expect(r.added.p50).toBeCloseTo(r.proxied.p50 - r.direct.p50, 6);
  });

  it('prints usage for --help and refuses unknown flags', async () => {
    const out = sink();
    await runProxyBenchCommand(['--help'], { stdout: out.stream });
    expect(out.text()).toMatch(/^Usage: mooncake-node proxy-bench/);
    await expect(runProxyBenchCommand(['--fast'])).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });
});
