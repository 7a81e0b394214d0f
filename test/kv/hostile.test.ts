// Stray and forged KV messages, in one process: a "done" releases only the hold it names (request token,
// paired rank, tp size, its own blocks), early messages are bounded and expire, oversized messages are
// refused unread, and duplicate destination blocks are refused before anything moves. Then what the
// vllm-ascend side channel can and cannot check.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, isMooncakeError } from '../../lib';
import { sendNotify } from '../../lib/handshake';
import { KV_NOTIFY_NAME, KvConsumer, KvProducer, encodeKvMessage, type KvMessage, type KvRankRef, type KvRefusal, type KvTransferParams } from '../../lib/kv';
import { ReqClient } from '../../lib/kv/zmq/sockets';
import { pack } from '../../lib/kv/zmq/wire';
import { freePortRange } from '../helpers/ports';

const common = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' };
const layout = { numLayers: 2, numBlocks: 64, blockSize: 4, headBytes: 16, numHeads: 1 };
const parallel = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 2 } };

/** A notify to a rank's handshake port; true when acknowledged. */
async function send(rank: KvProducer | KvConsumer, notify: { name: string; msg: string }): Promise<true | string> {
  try {
    await sendNotify('127.0.0.1', rank.engine.rpcPort, notify, { timeoutMs: 5000 });
    return true;
  } catch (err) {
    return isMooncakeError(err) ? err.code : String(err);
  }
}

/** Lets scheduled releases (setImmediate) run. */
const tick = () => new Promise((r) => setImmediate(r));

describe('who may release a hold (mooncake-node side channel, prefill tp 2 -> decode tp 2)', () => {
  let meta: MetadataServer;
  let url: string;
  const producers: KvProducer[] = [];
  const consumers: KvConsumer[] = [];
  const refused: KvRefusal[] = [];
  const decode = (tp: number, over: Partial<KvRankRef> = {}): KvRankRef => ({ engine_id: 'd', dp_rank: 0, tp_rank: tp, tp_size: 2, host: '127.0.0.1', rpc_port: consumers[tp]?.engine.rpcPort ?? 1, ...over });
  const done = (rid: string, over: Partial<Extract<KvMessage, { type: 'done' }>> = {}) =>
    encodeKvMessage({ type: 'done', request_id: rid, from: decode(0), ok: true, failed_block_ids: [], ...over });

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    for (let tp = 0; tp < 2; tp++) {
      const p = await KvProducer.create({ engineId: 'p', tpRank: tp, ...parallel, layout, metadataServer: url, engineOptions: common, earlyMessages: { ttlMs: 400, maxCount: 4, maxBytes: 1500 } });
      p.on('refused', (r) => refused.push(r));
      producers.push(p);
      consumers.push(await KvConsumer.create({ engineId: 'd', tpRank: tp, ...parallel, layout, metadataServer: url, engineOptions: common }));
    }
  });

  afterAll(async () => {
    await Promise.all([...producers, ...consumers].map((r) => r.close()));
    await meta?.close();
  });

  it('the params carry a request token, the same on every tp rank of the instance', () => {
    const a = producers[0].transferParams('same', [1]);
    const b = producers[1].transferParams('same', [1]);
    expect(a.remote_token).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(b.remote_token).toBe(a.remote_token);
    expect(producers[0].transferParams('other', [1]).remote_token).not.toBe(a.remote_token);
  });

  it('forged dones release nothing: no token, a wrong one, a nonsense tp_size, an unpaired rank, foreign blocks', async () => {
    const holds = producers.map((p) => p.hold('forged', [1, 2, 3]));
    const token = holds[0].params.remote_token as string;
    const before = { ...producers[0].metrics().refused };
    refused.length = 0;
    const answers = [
      // From an invented engine and host, without a token; then a made-up one.
      await send(producers[0], done('forged', { from: decode(0, { engine_id: 'evil', host: '10.6.6.6', rpc_port: 6666 }) })),
      await send(producers[0], done('forged', { token: 'A'.repeat(22) })),
      // With the token (a consumer that has the params), but impossible for this hold.
      await send(producers[0], done('forged', { token, from: decode(0, { tp_size: 7 }) })),
      await send(producers[0], done('forged', { token, from: decode(1) })),
      await send(producers[0], done('forged', { token, failed_block_ids: [9] })),
    ];
    // Each sender is told (the notify is rejected), and the engine's notify buffer never saw them.
    expect(answers).toEqual(Array(5).fill('REJECT_HANDSHAKE'));
    expect(producers[0].engine.stats().notifiesQueued).toBe(0);
    await tick();
    expect(producers[0].heldRequests().map((h) => h.requestId)).toContain('forged');
    const after = producers[0].metrics().refused;
    expect(after['bad-token'] - before['bad-token']).toBe(2);
    expect(after['wrong-tp-size'] - before['wrong-tp-size']).toBe(1);
    expect(after['not-a-peer'] - before['not-a-peer']).toBe(1);
    expect(after['bad-block-ids'] - before['bad-block-ids']).toBe(1);
    expect(refused.map((r) => r.reason)).toEqual(['bad-token', 'bad-token', 'wrong-tp-size', 'not-a-peer', 'bad-block-ids']);
    expect(refused[0]).toMatchObject({ type: 'done', requestId: 'forged', from: { engineId: 'evil', host: '10.6.6.6' } });
    // The real consumers' pulls still release both ranks.
    const outcomes = await Promise.all(consumers.map((c) => c.pull(holds[0].params, [10, 11, 12])));
    for (const o of outcomes) expect(o.ok, o.error?.message).toBe(true);
    expect((await Promise.all(holds.map((h) => h.released))).map((r) => r.reason)).toEqual(['done', 'done']);
  });

  it('a done before hold() is checked on arrival: forged ones are refused, a valid one releases the later hold, and it expires', async () => {
    const token = (rid: string) => producers[0].transferParams(rid, []).remote_token as string;
    // Forged early done: refused on arrival, and a later hold is not released by it.
    expect(await send(producers[0], done('early-forged'))).toBe('REJECT_HANDSHAKE');
    const h1 = producers[0].hold('early-forged', [4]);
    await tick();
    expect(producers[0].heldRequests().map((h) => h.requestId)).toContain('early-forged');
    // A real early done (the decode read faster than this rank's hold) releases at once.
    expect(await send(producers[0], done('early-ok', { token: token('early-ok') }))).toBe(true);
    const h2 = producers[0].hold('early-ok', [5]);
    expect((await h2.released).reason).toBe('done');
    // One that waited longer than earlyMessages.ttlMs (400 ms) is forgotten.
    const expiredBefore = producers[0].metrics().early.expired;
    await send(producers[0], done('early-late', { token: token('early-late') }));
    expect(producers[0].metrics().early.held).toBe(1);
    await new Promise((r) => setTimeout(r, 500));
    const h3 = producers[0].hold('early-late', [6]);
    await tick();
    expect(producers[0].heldRequests().map((h) => h.requestId)).toContain('early-late');
    expect(producers[0].metrics().early.expired).toBe(expiredBefore + 1);
    for (const h of [h1, h3]) producers[0].release(h.requestId);
  });

  it('the early-message buffer is bounded by count and bytes: when full, new ones are refused and counted', async () => {
    const token = (p: KvProducer, rid: string) => p.transferParams(rid, []).remote_token as string;
    await new Promise((r) => setTimeout(r, 450)); // earlier early messages expired
    refused.length = 0;
    // Bytes (maxBytes 1500): 64 failed block ids are about 850 bytes as kept; the second does not fit.
    const big = Array.from({ length: 64 }, (_, i) => i);
    const p1 = producers[1];
    const answers = [];
    for (const rid of ['big-0', 'big-1']) answers.push(await send(p1, done(rid, { token: token(p1, rid), from: decode(1), ok: false, failed_block_ids: big })));
    expect(answers).toEqual([true, 'REJECT_HANDSHAKE']);
    expect(p1.metrics().early.held).toBe(1);
    expect(p1.metrics().early.bytes).toBeLessThanOrEqual(1500);
    expect(refused).toEqual([expect.objectContaining({ reason: 'early-full', requestId: 'big-1' })]);
    // Count (maxCount 4): the fifth small one does not fit.
    const p0 = producers[0];
    for (let i = 0; i < 5; i++) await send(p0, done(`small-${i}`, { token: token(p0, `small-${i}`) }));
    expect(p0.metrics().early.held).toBe(4);
    expect(refused.map((r) => r.requestId)).toEqual(['big-1', 'small-4']);
    expect(p1.metrics().refused['early-full'] + p0.metrics().refused['early-full']).toBe(2);
  });

  it('an oversized KV message is refused unread; block ids outside the layout are malformed', async () => {
    const before = producers[0].metrics();
    const huge = JSON.stringify({ type: 'done', request_id: 'huge', from: decode(0), ok: false, failed_block_ids: Array.from({ length: 100_000 }, (_, i) => i) });
    expect(await send(producers[0], { name: KV_NOTIFY_NAME, msg: huge })).toBe('REJECT_HANDSHAKE');
    expect(await send(producers[0], done('outside', { failed_block_ids: [64] }))).toBe('REJECT_HANDSHAKE');
    expect(await send(producers[0], done('twice', { failed_block_ids: [3, 3] }))).toBe('REJECT_HANDSHAKE');
    const after = producers[0].metrics();
    expect(after.refused['too-large'] - before.refused['too-large']).toBe(1);
    expect(after.refused.malformed - before.refused.malformed).toBe(2);
    expect(after.notifies.malformed - before.notifies.malformed).toBe(2);
  });

  it("KV messages never wait in the engine's notify buffer; the application's own notifies still do", async () => {
    const p = producers[0];
    p.engine.getNotifies();
    expect(await send(p, { name: 'app/1', msg: 'hello' })).toBe(true);
    const h = p.hold('consumed', [7]);
    const [o] = await Promise.all([consumers[0].pull(h.params, [7]), h.released]);
    expect(o.ok).toBe(true);
    expect(p.engine.getNotifies()).toEqual([{ name: 'app/1', msg: 'hello' }]);
    producers[1].release('consumed');
  });

  it('one KV rank per engine: a second rank on the same engine is INVALID_CONFIG and registers nothing', async () => {
    const engine = producers[0].engine;
    const regions = engine.memoryRegions.length;
    await expect(KvConsumer.create({ engineId: 'd2', ...parallel, layout, metadataServer: url, engine })).rejects.toMatchObject({ code: 'INVALID_CONFIG', details: { field: 'engine' } });
    expect(engine.memoryRegions).toHaveLength(regions);
  });

  it('duplicate destination blocks are refused before anything moves: pull, expect and push', async () => {
    const holds = producers.map((p) => p.hold('dup', [1, 2, 3]));
    const view = consumers[0].caches.blockView(0, 'k', 5)!;
    view.fill(0x5a);
    const started = consumers[0].metrics().transfers.started;
    const err = await consumers[0].pull(holds[0].params, [5, 5, 5]).catch((e: unknown) => e);
    expect(isMooncakeError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as { details?: { field?: string; blockId?: number } }).details).toMatchObject({ field: 'blockIds', blockId: 5 });
    expect(view.every((b) => b === 0x5a)).toBe(true);
    expect(consumers[0].metrics().transfers.started).toBe(started);
    expect(() => consumers[0].expect('dup-x', [4, 7, 4])).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const pushParams = { ...(consumers[0].transferParams('dup-push', [8, 9]) as KvTransferParams), remote_block_ids: [8, 8] };
    await expect(producers[0].push(pushParams, [1, 2])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    // Source blocks may repeat (two local blocks get the same remote block): that is allowed.
    for (const p of producers) p.release('dup');
  });
});

describe('what the vllm-ascend side channel can check (its DONE carries a request id and nothing else)', () => {
  const one = { prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 } };
  let producer: KvProducer;
  let consumer: KvConsumer;
  let kvPort: number;
  const client = new ReqClient({ timeoutMs: 300, tries: 1 });
  /** A DONE as a vllm-ascend decode sends it, from anywhere; the answer's text, or the error code. */
  const done = (rid: string): Promise<string> =>
    client.request('127.0.0.1', kvPort, pack([Buffer.from('done_recving_msg'), rid, null])).then((b) => b.toString(), (e: { code?: string }) => e.code ?? 'ERROR');

  beforeAll(async () => {
    kvPort = await freePortRange(1);
    const common = { sideChannel: 'vllm-ascend' as const, host: '127.0.0.1', ...one, layout };
    producer = await KvProducer.create({ ...common, engineId: 'vp', kvPort, earlyMessages: { ttlMs: 300 } });
    consumer = await KvConsumer.create({ ...common, engineId: 'vd', kvPort: await freePortRange(1) });
  });

  afterAll(async () => {
    client.close();
    await Promise.all([producer, consumer].map((r) => r?.close()));
  });

  it('a DONE for a held request releases it, whoever sends it: the protocol has no token and no sender rank', async () => {
    const h = producer.hold('va-held', [1, 2]);
    expect(h.params).not.toHaveProperty('remote_token');
    expect(await done('va-held')).toBe('ACK');
    expect((await h.released).reason).toBe('done');
  });

  it('a DONE before hold() counts only within earlyMessages.ttlMs; a malformed one is not answered', async () => {
    expect(await done('va-early')).toBe('ACK');
    expect((await producer.hold('va-early', [3]).released).reason).toBe('done');
    expect(await done('va-stale-done')).toBe('ACK');
    await new Promise((r) => setTimeout(r, 400));
    const h = producer.hold('va-stale-done', [4]);
    await tick();
    expect(producer.heldRequests().map((x) => x.requestId)).toContain('va-stale-done');
    producer.release('va-stale-done');
    const malformed = producer.metrics().refused.malformed;
    expect(await done('x'.repeat(1025))).toBe('TIMEOUT');
    expect(producer.metrics().refused.malformed).toBe(malformed + 1);
    await h.released;
  });

  it('between mooncake-node ranks on this wire the hold fence still works (an extra metadata key vllm-ascend ignores): a late pull is STALE_KV', async () => {
    const h = producer.hold('va-late', [5, 6], { abortTimeoutMs: 10 });
    expect((await h.released).reason).toBe('abort-timeout');
    const o = await consumer.pull(h.params, [7, 8]);
    expect(o.ok).toBe(false);
    expect(o.error?.code).toBe('STALE_KV');
    const fresh = producer.hold('va-fresh', [9]);
    expect((await consumer.pull(fresh.params, [10])).ok).toBe(true);
  });
});
