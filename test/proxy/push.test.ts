// mode 'push' (vLLM's own MooncakeConnector and its mooncake_connector_proxy.py): one transfer id to prefill and
// decode, both called at once; decode gets the prefill instance's bootstrap server and the engine id of the dp
// rank prefill is told to use (X-data-parallel-rank). test/connectors/vllm.test.ts runs it with the released
// vLLM connector behind it; here the instances are stand-ins and the bootstrap servers mooncake-node's.
import * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { BootstrapServer } from '../../lib/kv';
import { parseProxyArgs } from '../../lib/proxy/flags';
import { Harness, closedPort, json, request, waitFor } from './stand-ins';

const h = new Harness();
afterEach(() => h.closeAll());

/** A bootstrap server listing `engines` (one per dp rank), as a vLLM prefill instance's rank 0 serves it. */
async function bootstrap(engines: string[]): Promise<BootstrapServer> {
  const s = await BootstrapServer.listen('127.0.0.1', 0);
  h.defer(() => s.close());
  engines.forEach((engine_id, dp) => s.register({ engine_id, dp_rank: dp, tp_rank: 0, pp_rank: 0, addr: `tcp://127.0.0.1:${5000 + dp}` }));
  return s;
}

describe("mode 'push'", () => {
  it('sends one transfer id to both, at once; decode gets the bootstrap server and the engine id of the dp rank prefill was given', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const prefill = await h.standIn({ role: 'prefill', cachedTokens: 3, behavior: () => ({ kind: 'gate', until: gate }) });
    // Decode answers once prefill did (as a real one: it needs the KV first).
    const prefilled = (id: string | undefined): Promise<void> => waitFor(() => prefill.requests.some((r) => r.requestId === id && r.finished), 'prefill').then(() => new Promise((r) => setTimeout(r, 50)));
    const decode = await h.standIn({ role: 'decode', behavior: (req) => ({ kind: 'gate', until: prefilled(req.requestId) }) });
    const boot = await bootstrap(['engine-dp0', 'engine-dp1']);
    const { addr } = await h.proxy({ mode: 'push', prefill: [prefill.url], decode: [decode.url], bootstrapPorts: { [prefill.url]: boot.port } });
    const answers = ['r-1', 'r-2'].map((id) => request(addr.url, '/v1/completions', { body: { model: 'm', prompt: 'Hello', max_tokens: 2, stream_options: { include_usage: true } }, headers: { 'x-request-id': id } }));
    // Decode is called while prefill has not answered yet.
    await waitFor(() => decode.requests.length === 2 && prefill.requests.length === 2, 'both instances called');
    expect(prefill.requests.every((r) => !r.finished)).toBe(true);
    open();
    const results = await Promise.all(answers);
    for (const r of results) expect(r.status).toBe(200);
    const dps = new Set<number>();
    for (const id of ['r-1', 'r-2']) {
      const p = prefill.requests.find((x) => x.requestId === id)!;
      const d = decode.requests.find((x) => x.requestId === id)!;
      expect(p.body).toMatchObject({ prompt: 'Hello', max_tokens: 1, min_tokens: 1, stream: false, kv_transfer_params: { do_remote_decode: true, do_remote_prefill: false, transfer_id: `xfer-${id}` } });
      expect(p.body).not.toHaveProperty('stream_options');
      const dp = Number(p.headers['x-data-parallel-rank']);
      dps.add(dp);
      expect(d.body).toMatchObject({ prompt: 'Hello', max_tokens: 2 });
      expect(d.body?.kv_transfer_params).toEqual({ do_remote_decode: false, do_remote_prefill: true, remote_bootstrap_addr: boot.url, remote_engine_id: `engine-dp${dp}`, transfer_id: `xfer-${id}` });
    }
    expect(dps).toEqual(new Set([0, 1])); // dp ranks are used in turn
    expect(json<{ usage: { prompt_tokens_details: { cached_tokens: number } } }>(results[0]).usage.prompt_tokens_details.cached_tokens).toBe(3);
  });

  it('a prefill that fails fails the request at once and cuts its decode (it would wait for KV that never comes)', async () => {
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'status', status: 500, body: { error: 'boom' } }) });
    const decode = await h.standIn({ role: 'decode', behavior: () => ({ kind: 'hang' }) });
    const boot = await bootstrap(['e0']);
    const { addr, proxy } = await h.proxy({ mode: 'push', prefill: [prefill.url], decode: [decode.url], bootstrapPorts: { [prefill.url]: boot.port }, retries: { maxRetries: 0 } });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'x', max_tokens: 2 } });
    expect(r.status).toBe(500);
    await waitFor(() => decode.requests[0]?.clientClosed === true, 'the decode request to be cut');
    expect(prefill.requests).toHaveLength(1); // never retried elsewhere: decode was told this instance
    await waitFor(() => proxy.stats().inFlight === 0, 'the request to end');
  });

  it('a decode that fails aborts the prefill; a prefill instance whose bootstrap server is down is passed over', async () => {
    const prefill = await h.standIn({ role: 'prefill', behavior: () => ({ kind: 'hang' }) });
    // A decode that refuses the request once prefill has it.
    const decodeServer = http.createServer((req, res) => {
      req.resume();
      void waitFor(() => prefill.requests.length > 0, 'the prefill request').then(() => res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"busy"}'));
    });
    await new Promise<void>((r) => decodeServer.listen(0, '127.0.0.1', () => r()));
    h.defer(() => new Promise<void>((r) => { decodeServer.close(() => r()); decodeServer.closeAllConnections(); }));
    const decodeUrl = `http://127.0.0.1:${(decodeServer.address() as { port: number }).port}`;
    const other = await h.standIn({ role: 'prefill' });
    const boot = await bootstrap(['e0']);
    const { addr } = await h.proxy({
      mode: 'push', prefill: [other.url, prefill.url], decode: [decodeUrl], healthCheck: { enabled: false },
      bootstrapPorts: { [other.url]: await closedPort(), [prefill.url]: boot.port }, retries: { maxRetries: 1, onHttpError: false },
    });
    const r = await request(addr.url, '/v1/completions', { body: { prompt: 'x', max_tokens: 2 } });
    expect(r.status, r.text).toBe(503); // decode's answer, forwarded
    expect(other.requests).toHaveLength(0); // its bootstrap server did not answer: never sent a prefill
    expect(prefill.requests).toHaveLength(1);
    await waitFor(() => prefill.requests[0].clientClosed, 'the prefill request to be aborted');
  });

  it('flags: --mode push and --bootstrap-ports (one for all, or one per prefill host)', () => {
    const one = parseProxyArgs(['--mode', 'push', '--prefiller-hosts', 'a', 'b', '--prefiller-ports', '1', '2', '--bootstrap-ports', '9000']);
    expect(one.options).toMatchObject({ mode: 'push', bootstrapPort: 9000 });
    const each = parseProxyArgs(['--mode', 'push', '--prefiller-hosts', 'a', 'b', '--prefiller-ports', '1', '2', '--bootstrap-ports', '9000', '9001']);
    expect(each.options.bootstrapPorts).toEqual({ 'http://a:1': 9000, 'http://b:2': 9001 });
    expect(() => parseProxyArgs(['--prefiller-hosts', 'a', 'b', '--prefiller-ports', '1', '2', '--bootstrap-ports', '1', '2', '3'])).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });
});
