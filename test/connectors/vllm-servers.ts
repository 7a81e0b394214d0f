/**
 * OpenAI-style HTTP fronts for the ranks of the vLLM-connector suites, so the Node proxy can sit in front:
 *
 * - `vllmPrefillFront` / `vllmDecodeFront`: stand-ins for vLLM's API server and engine core in front of real
 *   vLLM connector ranks (VllmPeer processes). For each completion they drive the real scheduler and worker
 *   the way vLLM's engine does (new request -> update_state_after_alloc -> connector metadata to every worker;
 *   prefill: request_finished after the "compute"; decode: wait for the worker's finished or failed receive).
 * - `nodePrefillFront` / `nodeDecodeFront`: a Node serving stack's KV calls (KvProducer.push, KvConsumer.pull).
 *
 * Every front records what reached it (body, headers, time) and answers with a JSON completion whose `kv`
 * field says what happened to the KV. Blocks are the ones `blocks` gives for the n-th request.
 */
import * as http from 'node:http';
import type { KvConsumer, KvProducer, KvTransferOutcome } from '../../lib';
import type { VllmPeer } from './peers/vllm-peer';

export interface Received {
  body: Record<string, unknown>;
  headers: http.IncomingHttpHeaders;
  at: number;
  answeredAt?: number;
}

export interface Front {
  url: string;
  received: Received[];
  close(): Promise<void>;
}

type Handler = (body: Record<string, unknown>, requestId: string, n: number) => Promise<Record<string, unknown>>;

async function front(handle: Handler): Promise<Front> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    if (req.method === 'GET') {
      req.resume();
      res.writeHead(req.url === '/health' ? 200 : 404).end();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      const r: Received = { body, headers: req.headers, at: performance.now() };
      received.push(r);
      const requestId = String(req.headers['x-request-id'] ?? `req-${received.length}`);
      handle(body, requestId, received.length - 1).then(
        (kv) => {
          r.answeredAt = performance.now();
          const out = Buffer.from(JSON.stringify({
            id: `cmpl-${requestId}`, object: 'text_completion', model: 'm',
            choices: [{ index: 0, text: ' ok', finish_reason: 'length', stop_reason: null }],
            usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9, prompt_tokens_details: { cached_tokens: 0 } },
            kv_transfer_params: null,
            kv,
          }));
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': out.length }).end(out);
        },
        (e: unknown) => {
          r.answeredAt = performance.now();
          res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: String(e) } }));
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** vLLM prefill ranks behind an API-server stand-in: blocks are held, then written when a decode asks. */
export function vllmPrefillFront(ranks: VllmPeer[], blocks: (n: number) => number[], computeMs = 200): Promise<Front> {
  return front(async (body, requestId, n) => {
    const params = body.kv_transfer_params as Record<string, unknown>;
    const ids = blocks(n);
    for (const r of ranks) await r.call({ cmd: 'prefill_begin', request_id: requestId, params });
    await new Promise((res) => setTimeout(res, computeMs)); // the prefill's forward pass
    for (const r of ranks) await r.call({ cmd: 'prefill_finish', request_id: requestId, block_ids: ids });
    return { blocks: ids };
  });
}

/** vLLM decode ranks behind an API-server stand-in: each worker pulls; the answer says whether all blocks arrived. */
export function vllmDecodeFront(ranks: VllmPeer[], blocks: (n: number) => number[], blockSize: number, timeoutS = 20): Promise<Front> {
  return front(async (body, requestId, n) => {
    const params = body.kv_transfer_params as Record<string, unknown>;
    const ids = blocks(n);
    for (const r of ranks) await r.call({ cmd: 'decode_begin', request_id: requestId, params, block_ids: ids, prompt_tokens: ids.length * blockSize });
    const waits = await Promise.all(ranks.map((r) => r.call({ cmd: 'wait', request_id: requestId, kind: 'recv', timeout: timeoutS }, (timeoutS + 30) * 1000)));
    const invalid = [...new Set(waits.flatMap((w) => w.invalid_block_ids as number[]))];
    return { blocks: ids, done: waits.every((w) => w.done === true), invalid_block_ids: invalid };
  });
}

function summary(o: KvTransferOutcome): Record<string, unknown> {
  return { ok: o.ok, failed_block_ids: o.failedBlockIds, failures: o.failures.map((f) => ({ stage: f.stage, code: f.code, advice: f.advice })) };
}

/** Node prefill ranks: push() with the prefill's params once "computed". */
export function nodePrefillFront(producers: KvProducer[], blocks: (n: number) => number[], outcomes: KvTransferOutcome[] = []): Promise<Front> {
  return front(async (body, _requestId, n) => {
    const ids = blocks(n);
    const res = await Promise.all(producers.map((p) => p.push(body.kv_transfer_params as Record<string, unknown>, ids)));
    outcomes.push(...res);
    return { blocks: ids, ranks: res.map(summary) };
  });
}

/** Node decode ranks: pull() with the decode's params. */
export function nodeDecodeFront(consumers: KvConsumer[], blocks: (n: number) => number[], outcomes: KvTransferOutcome[] = []): Promise<Front> {
  return front(async (body, _requestId, n) => {
    const ids = blocks(n);
    const res = await Promise.all(consumers.map((c) => c.pull(body.kv_transfer_params as Record<string, unknown>, ids)));
    outcomes.push(...res);
    return { blocks: ids, ranks: res.map(summary) };
  });
}
