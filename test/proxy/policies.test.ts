import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { LeastLoadPolicy, RoundRobinPolicy, createPolicy, type PolicyName } from '../../lib/proxy';
import { Harness, request, waitFor, type StandIn } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

const load = (name: string, inFlight: number, inFlightTokens: number): { name: string; inFlight: number; inFlightTokens: number } => ({ name, inFlight, inFlightTokens });

describe('policies (unit)', () => {
  it('round-robin cycles through the candidates', () => {
    const p = new RoundRobinPolicy();
    const c = [load('a', 0, 0), load('b', 5, 0), load('c', 0, 0)];
    expect(Array.from({ length: 7 }, () => p.pick(c)?.name)).toEqual(['a', 'b', 'c', 'a', 'b', 'c', 'a']);
    expect(p.pick([])).toBeUndefined();
  });

  it('least-requests picks the fewest in-flight requests and spreads ties', () => {
    const p = new LeastLoadPolicy('least-requests');
    expect(p.pick([load('a', 3, 0), load('b', 1, 900), load('c', 2, 0)])?.name).toBe('b');
    const tie = [load('a', 1, 0), load('b', 1, 0), load('c', 1, 0)];
    expect(new Set(Array.from({ length: 3 }, () => p.pick(tie)?.name))).toEqual(new Set(['a', 'b', 'c']));
  });

  it('least-tokens picks the fewest in-flight tokens, then the fewest requests', () => {
    const p = new LeastLoadPolicy('least-tokens');
    expect(p.pick([load('a', 1, 1000), load('b', 3, 30), load('c', 2, 40)])?.name).toBe('b');
    expect(p.pick([load('a', 2, 10), load('b', 1, 10)])?.name).toBe('b');
  });

  it('createPolicy knows the three names and refuses others', () => {
    for (const n of ['round-robin', 'least-requests', 'least-tokens'] as const) expect(createPolicy(n).name).toBe(n);
    expect(() => createPolicy('random' as PolicyName)).toThrow(/policy="random"/);
  });
});

describe('policies through the proxy', () => {
  it('round-robin alternates prefill and decode instances', async () => {
    const p = [await h.standIn({ role: 'prefill' }), await h.standIn({ role: 'prefill' })];
    const d = [await h.standIn({ role: 'decode' }), await h.standIn({ role: 'decode' })];
    const { addr } = await h.proxy({ prefill: p.map((s) => s.url), decode: d.map((s) => s.url), policy: 'round-robin' });
    for (let i = 0; i < 6; i++) {
      await request(addr.url, '/v1/completions', { body: { prompt: `${i}` }, headers: { 'x-request-id': `r${i}` } });
    }
    expect(p[0].requests.map((r) => r.requestId)).toEqual(['r0', 'r2', 'r4']);
    expect(p[1].requests.map((r) => r.requestId)).toEqual(['r1', 'r3', 'r5']);
    expect(d[0].requests.map((r) => r.requestId)).toEqual(['r0', 'r2', 'r4']);
    expect(d[1].requests.map((r) => r.requestId)).toEqual(['r1', 'r3', 'r5']);
  });

  /**
   * Holds every decode request open, then sends one big prompt followed by three small ones, each after the
   * previous one reached a decode instance. Returns how many requests each decode instance holds.
   */
  async function distribution(policy: PolicyName): Promise<number[]> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const prefill = await h.standIn({ role: 'prefill' });
    const d: StandIn[] = [];
    for (let i = 0; i < 2; i++) d.push(await h.standIn({ role: 'decode', behavior: () => ({ kind: 'gate', until: gate }) }));
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: d.map((s) => s.url), decodePolicy: policy });
    const agent = new http.Agent({ keepAlive: false });
    h.defer(() => agent.destroy());
    const pending: Promise<unknown>[] = [];
    const prompts = ['x'.repeat(4000), 'hi', 'hi', 'hi'];
    for (let k = 0; k < prompts.length; k++) {
      pending.push(request(addr.url, '/v1/completions', { body: { prompt: prompts[k], max_tokens: 4 }, agent }));
      await waitFor(() => d[0].requests.length + d[1].requests.length === k + 1, `request ${k} to reach a decode instance`);
    }
    const bigOn = d.findIndex((s) => s.requests.some((r) => String(r.body?.prompt).length === 4000));
    const held = proxy.instances('decode').map((i) => i.inFlight);
    release();
    const answers = (await Promise.all(pending)) as { status: number }[];
    expect(answers.every((a) => a.status === 200)).toBe(true);
    await waitFor(() => proxy.instances('decode').every((i) => i.inFlight === 0 && i.inFlightTokens === 0), 'the load to drain');
    // Report [instance holding the big prompt, the other one].
    return [held[bigOn], held[1 - bigOn]];
  }

  it('least-requests balances the number of requests in flight', async () => {
    expect(await distribution('least-requests')).toEqual([2, 2]);
  });

  it('least-tokens balances estimated tokens: small requests avoid the instance busy with a big prompt', async () => {
    expect(await distribution('least-tokens')).toEqual([1, 3]);
  });
});
