// The proxy behaves as vllm-ascend's load_balance_proxy_server_example.py: min_tokens 1 on prefill, cached_tokens
// copied into decode's usage, re-dispatch after stop_reason "recomputed", /reset_prefix_cache fanned out. Each
// behaviour is checked on, and off through its switch.
import { afterEach, describe, expect, it } from 'vitest';
import { Harness, json, request, standInToken, type StandIn } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

const tokens = (from: number, to: number): string => Array.from({ length: to - from }, (_, i) => standInToken(from + i)).join('');

/** The SSE events of a stream answer, parsed (the [DONE] marker as the string). */
function events(text: string): (Record<string, unknown> | string)[] {
  return text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => {
      const data = e.slice(6);
      return data === '[DONE]' ? data : (JSON.parse(data) as Record<string, unknown>);
    });
}

function streamText(text: string): string {
  return events(text)
    .filter((e): e is Record<string, unknown> => typeof e !== 'string')
    .map((e) => {
      const c = (e.choices as { text?: string; delta?: { content?: string } }[])[0];
      return c?.text ?? c?.delta?.content ?? '';
    })
    .join('');
}

describe('min_tokens on prefill', () => {
  it('is 1 on every prefill request by default, and only when the client set it with prefillMinTokens: false', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode' });
    const on = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const off = await h.proxy({ prefill: [prefill.url], decode: [decode.url], prefillMinTokens: false });
    await request(on.addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 3 } });
    await request(off.addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 3 } });
    await request(off.addr.url, '/v1/completions', { body: { prompt: 'a', max_tokens: 3, min_tokens: 2 } });
    expect(prefill.requests.map((r) => r.body?.min_tokens)).toEqual([1, undefined, 1]);
    // decode gets the client's own values
    expect(decode.requests.map((r) => r.body?.min_tokens)).toEqual([undefined, undefined, 2]);
  });
});

describe("prefill's cached_tokens in decode's usage", () => {
  it('is written into a JSON answer and into the usage chunk of a stream', async () => {
    const prefill = await h.standIn({ role: 'prefill', cachedTokens: 48 });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'hello', max_tokens: 3 } });
    const answer = json<{ usage: { prompt_tokens_details: { cached_tokens: number }; completion_tokens: number }; choices: { text: string }[] }>(r);
    expect(answer.usage.prompt_tokens_details.cached_tokens).toBe(48);
    expect(answer.usage.completion_tokens).toBe(3);
    expect(answer.choices[0].text).toBe(tokens(0, 3));
    expect(Number(r.headers['content-length'])).toBe(r.body.length);

    const s = await request(addr.url, '/v1/chat/completions', {
      body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, stream: true, stream_options: { include_usage: true } },
    });
    const evs = events(s.text);
    expect(evs[evs.length - 1]).toBe('[DONE]');
    const usage = evs.filter((e): e is Record<string, unknown> => typeof e !== 'string' && e.usage !== undefined);
    expect(usage).toHaveLength(1);
    expect(usage[0].usage).toMatchObject({ completion_tokens: 4, prompt_tokens_details: { cached_tokens: 48 } });
    // Every other event is decode's own bytes.
    const sent = decode.requests[1].sent!.toString('utf8');
    const untouched = sent.split('\n\n').filter((e) => !e.includes('"usage"'));
    for (const e of untouched) expect(s.text).toContain(e);
    expect(streamText(s.text)).toBe(tokens(0, 4));
  });

  it('with copyCachedTokens: false (and recompute off), the answer is decode bytes for bytes', async () => {
    const prefill = await h.standIn({ role: 'prefill', cachedTokens: 48 });
    const decode = await h.standIn({ role: 'decode' });
    const { addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], copyCachedTokens: false, recompute: { enabled: false } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'hello', max_tokens: 3 } });
    expect(r.body.equals(decode.requests[0].sent!)).toBe(true);
    expect(json<{ usage: Record<string, unknown> }>(r).usage.prompt_tokens_details).toBeUndefined();
  });
});

describe('re-dispatch after stop_reason "recomputed"', () => {
  /** Two pairs: the first decode gives up after `after` tokens, the second finishes. */
  async function pairs(after: number): Promise<{ p: StandIn[]; d: StandIn[]; url: string; stats: () => { recomputes: number } }> {
    const p = [await h.standIn({ role: 'prefill', cachedTokens: 7 }), await h.standIn({ role: 'prefill', cachedTokens: 9 })];
    let first = true;
    const d = [
      await h.standIn({
        role: 'decode',
        behavior: () => {
          if (!first) return undefined;
          first = false;
          return { kind: 'recompute', after };
        },
      }),
    ];
    d.push(await h.standIn({ role: 'decode' }));
    const { proxy, addr } = await h.proxy({ prefill: p.map((x) => x.url), decode: d.map((x) => x.url), policy: 'round-robin' });
    return { p, d, url: addr.url, stats: () => proxy.stats() };
  }

  it('streams one continuous answer: the text so far joins the prompt, max_tokens shrinks, a new prefill/decode pair continues', async () => {
    const { p, d, url, stats } = await pairs(3);
    const r = await request(url, '/v1/completions', { body: { prompt: 'Once', max_tokens: 10, stream: true }, headers: { 'x-request-id': 'rc-1' } });
    expect(r.status).toBe(200);
    expect(r.headers['x-request-id']).toBe('rc-1');
    const generated = tokens(0, 4); // 3 tokens, then the one that carried "recomputed"
    // The second dispatch: prompt continued, budget reduced by the 4 counted chunks (+1 per re-dispatch), a new id.
    expect(p[1].requests[0].body).toMatchObject({ prompt: `Once${generated}`, max_tokens: 1, min_tokens: 1 });
    expect(d[1].requests[0].body).toMatchObject({ prompt: `Once${generated}`, max_tokens: 10 - 4 + 1, stream: true });
    expect(d[1].requests[0].requestId).toBe('rc-1-recompute-1');
    // The client never sees "recomputed" (the text that came with it, yes: no gap), and gets one stream ending
    // in [DONE] whose text is exactly what the second prompt continues from, then the continuation.
    expect(r.text).not.toContain('recomputed');
    const evs = events(r.text);
    expect(evs.filter((e) => e === '[DONE]')).toHaveLength(1);
    expect(streamText(r.text)).toBe(generated + tokens(0, 7));
    expect(stats().recomputes).toBe(1);
  });

  it('gives a JSON answer the whole text and the later usage', async () => {
    const { p, d, url } = await pairs(2);
    const r = await request(url, '/v1/completions', { body: { prompt: 'Once', max_tokens: 8 } });
    const answer = json<{ choices: { text: string; stop_reason?: string }[]; usage: { prompt_tokens_details: { cached_tokens: number } } }>(r);
    // vllm-ascend's count for JSON: usage.completion_tokens of the recomputed answer (3), +1 per re-dispatch.
    expect(d[1].requests[0].body).toMatchObject({ prompt: `Once${tokens(0, 3)}`, max_tokens: 8 - 3 + 1 });
    expect(answer.choices[0].text).toBe(tokens(0, 3) + tokens(0, 6));
    expect(answer.choices[0].stop_reason).toBeUndefined();
    expect(answer.usage.prompt_tokens_details.cached_tokens).toBe(9); // the prefill that served the last dispatch
    expect(p[0].requests).toHaveLength(1);
  });

  it('continues a chat from an assistant message (vLLM continue_final_message)', async () => {
    const { d, url } = await pairs(1);
    const messages = [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'hi' },
    ];
    const r = await request(url, '/v1/chat/completions', { body: { messages, max_tokens: 5, stream: true } });
    expect(r.status).toBe(200);
    expect(d[1].requests[0].body).toMatchObject({
      messages: [...messages, { role: 'assistant', content: tokens(0, 2) }],
      continue_final_message: true,
      add_generation_prompt: false,
      max_tokens: 5 - 2 + 1,
    });
    expect(streamText(r.text)).toBe(tokens(0, 2) + tokens(0, 4));
  });

  it('is bounded by recompute.maxRedispatches, then passes the "recomputed" answer through', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'recompute', after: 1 }) });
    const { proxy, addr } = await h.proxy({ prefill: [prefill.url], decode: [decode.url], recompute: { maxRedispatches: 2 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'x', max_tokens: 10 } });
    expect(decode.requests).toHaveLength(3);
    expect(prefill.requests).toHaveLength(3);
    expect(json<{ choices: { stop_reason: string }[] }>(r).choices[0].stop_reason).toBe('recomputed');
    expect(proxy.stats().recomputes).toBe(2);
  });

  it('with recompute disabled, or a prompt of token ids, the answer passes through', async () => {
    const prefill = await h.standIn({ role: 'prefill' });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'recompute', after: 1 }) });
    const off = await h.proxy({ prefill: [prefill.url], decode: [decode.url], recompute: { enabled: false } });
    const on = await h.proxy({ prefill: [prefill.url], decode: [decode.url] });
    const a = await request(off.addr.url, '/v1/completions', { body: { prompt: 'x', max_tokens: 10, stream: true } });
    const b = await request(on.addr.url, '/v1/completions', { body: { prompt: [1, 2, 3], max_tokens: 10, stream: true } });
    for (const r of [a, b]) expect(r.text).toContain('"stop_reason":"recomputed"');
    expect(decode.requests).toHaveLength(2);
  });
});

describe('/reset_prefix_cache', () => {
  it('is sent to every prefill and decode instance with the query string and the api key', async () => {
    const all = [await h.standIn({ role: 'prefill' }), await h.standIn({ role: 'prefill' }), await h.standIn({ role: 'decode' })];
    const { addr } = await h.proxy({ prefill: [all[0].url, all[1].url], decode: [all[2].url], apiKey: 'sk-k' });
    const r = await request(addr.url, '/reset_prefix_cache?reset_running_requests=true', { method: 'POST' });
    expect(r.status).toBe(200);
    expect(json<{ reset: string[] }>(r).reset.sort()).toEqual(all.map((s) => s.url).sort());
    for (const s of all) {
      expect(s.resets).toHaveLength(1);
      expect(s.resets[0].query).toBe('?reset_running_requests=true');
      expect(s.resets[0].headers.authorization).toBe('Bearer sk-k');
    }
    expect((await request(addr.url, '/reset_prefix_cache')).status).toBe(405);
  });

  it('answers 500 naming the instances that failed', async () => {
    const ok = await h.standIn({ role: 'prefill' });
    const bad = await h.standIn({ role: 'decode', resetStatus: 503 });
    const { addr } = await h.proxy({ prefill: [ok.url, 'http://127.0.0.1:9'], decode: [bad.url], healthCheck: { enabled: false } });
    const r = await request(addr.url, '/reset_prefix_cache', { method: 'POST' });
    expect(r.status).toBe(500);
    expect(json<{ failed: string[]; reset: string[] }>(r)).toEqual({ failed: ['http://127.0.0.1:9', bad.url], reset: [ok.url] });
  });

  it('needs the admin token when one is set, and is gone with resetPrefixCache: false', async () => {
    const s = await h.standIn({ role: 'prefill' });
    const guarded = await h.proxy({ prefill: [s.url], decode: [], adminToken: 'tok' });
    expect((await request(guarded.addr.url, '/reset_prefix_cache', { method: 'POST' })).status).toBe(401);
    expect((await request(guarded.addr.url, '/reset_prefix_cache', { method: 'POST', headers: { authorization: 'Bearer tok' } })).status).toBe(200);
    const off = await h.proxy({ prefill: [s.url], decode: [], resetPrefixCache: false });
    expect((await request(off.addr.url, '/reset_prefix_cache', { method: 'POST' })).status).toBe(404);
    expect(s.resets).toHaveLength(1);
  });
});
