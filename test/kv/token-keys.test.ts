// Request tokens when the ranks of one instance run in separate processes (one per tp rank, as vLLM runs
// them) and no holdKey is set: the proxy hands the params ONE rank made to the decode, whose "done"s reach
// every prefill rank. Each process has its own random key and every rank publishes it in its registry
// entry, so each rank checks the tokens the others issued; a "done" whose key is not known yet waits for a
// read of the instance's keys; forged ones are refused on every rank. Then a configured holdKey (nothing
// published) and a rank that restarts with a new key. Every pulled byte is checked against its pattern.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, isMooncakeError } from '../../lib';
import { sendNotify } from '../../lib/handshake';
import { encodeKvMessage, type KvRankRef, type KvTransferParams } from '../../lib/kv';
import { RequestTokens } from '../../lib/kv/tokens';
import { KvGroup, type GroupConfig, type RankOutcome } from './group';

const layout = { numLayers: 2, numBlocks: 64, blockSize: 4, headBytes: 16, numHeads: 2 };
const totalKvHeads = 4;
const prefill = { dpSize: 3, tpSize: 2 };
const decodeSize = { dpSize: 1, tpSize: 2 };
/** Bytes of `blocks` blocks of one decode rank (2 of the 4 heads). */
const rankBytes = (blocks: number) => blocks * layout.numLayers * 2 * layout.blockSize * layout.numHeads * layout.headBytes;

type Metrics = { dp: number; tp: number; metrics: { refused: Record<string, number>; early: { held: number; expired: number }; notifies: { sendFailed: number } } }[];

let meta: MetadataServer;
let url: string;
/** The decode instance 'd' (tp 2), one process per rank. */
const decode: KvGroup[] = [];

const entry = (key: string) => JSON.parse(meta.entries().get(key)!) as { rpc_port: number; token_key?: string; instance: string };
const group = (engineId: string, role: 'producer' | 'consumer', tpRanks: number[], extra: Partial<GroupConfig> = {}) =>
  KvGroup.spawn({ role, engineId, metadataServer: url, prefill, decode: decodeSize, layout, totalKvHeads, tpRanks, ...extra });

/** A KV notify to rank `key`'s handshake port: 'ACK', or the error code. */
async function send(key: string, msg: Parameters<typeof encodeKvMessage>[0]): Promise<string> {
  try {
    await sendNotify('127.0.0.1', entry(key).rpc_port, encodeKvMessage(msg), { timeoutMs: 5000 });
    return 'ACK';
  } catch (err) {
    return isMooncakeError(err) ? err.code : String(err);
  }
}

/** A "done" as decode rank `tp` sends it. */
const done = (rid: string, tp: number, token: string | undefined) => ({
  type: 'done' as const,
  request_id: rid,
  from: { engine_id: 'd', dp_rank: 0, tp_rank: tp, tp_size: 2, host: '127.0.0.1', rpc_port: entry(`mooncake/kv/d/0/${tp}`).rpc_port } satisfies KvRankRef,
  ok: true,
  failed_block_ids: [],
  ...(token !== undefined ? { token } : {}),
});

/** Pulls `params` into `blocks` on both decode ranks (each in its process); every byte checked. */
async function pull(params: KvTransferParams, blocks: number[]): Promise<RankOutcome[]> {
  const out = await Promise.all(decode.map((d) => d.call<RankOutcome[]>('pull', { dp: 0, params, blockIds: blocks })));
  return out.flat();
}

function expectVerified(results: RankOutcome[], blocks: number): void {
  expect(results).toHaveLength(2);
  for (const r of results) {
    expect(r, `tp${r.tp}: ${r.error ?? ''}`).toMatchObject({ ok: true, failedBlockIds: [], mismatches: 0 });
    expect(r.checkedBytes).toBe(rankBytes(blocks));
  }
}

async function metricsOf(g: KvGroup, dp: number): Promise<Metrics[number]['metrics']> {
  return (await g.call<Metrics>('metrics')).find((m) => m.dp === dp)!.metrics;
}

/** Polls `f` until it is true (bounded). */
async function until(f: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await f())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Both prefill ranks (tp 0 in `p0`, tp 1 in `p1`) released `rid` for `reason`. */
async function released(p0: KvGroup, p1: KvGroup, rid: string): Promise<string[]> {
  return Promise.all([0, 1].map(async (tp) => (await [p0, p1][tp]!.waitEvent((e) => e.event === 'released' && e.requestId === rid && e.tp === tp)).reason as string));
}

beforeAll(async () => {
  meta = new MetadataServer({ logger: null });
  url = (await meta.listen()).url;
  decode.push(...(await Promise.all([0, 1].map((tp) => group('d', 'consumer', [tp])))));
});

afterAll(async () => {
  await Promise.all(decode.map((d) => d.close()));
  await meta?.close();
});

describe('no holdKey: prefill tp 2 in two processes', () => {
  let p0: KvGroup;
  let p1: KvGroup;

  beforeAll(async () => {
    // tp 1 starts first: its first read of the instance's keys finds no tp 0, so until it reads again it
    // does not know tp 0's key (its periodic read is a minute away). tp 1 also serves dp 2, whose tp 0
    // never starts.
    p1 = await group('p', 'producer', [1], { options: { heartbeatMs: 60_000 } });
    p0 = await group('p', 'producer', [0], { dpRanks: [0, 1] });
  });

  afterAll(async () => {
    await p0?.close();
    await p1?.close();
  });

  it('each process publishes its own key; tokens made under it verify', async () => {
    const k0 = entry('mooncake/kv/p/0/0').token_key!;
    const k1 = entry('mooncake/kv/p/0/1').token_key!;
    expect(k0).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(k1).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(k0).not.toBe(k1);
    expect(entry('mooncake/kv/p/1/0').token_key).toBe(k0); // one key per process
    const [t0] = await p0.call<string[]>('tokens', { dp: 0, requestIds: ['same'] });
    const [t1] = await p1.call<string[]>('tokens', { dp: 0, requestIds: ['same'] });
    expect(t0).not.toBe(t1);
    // The trust boundary: whoever reads the metadata store can make tokens.
    expect(new RequestTokens(Buffer.from(k0, 'base64url'), 'p', 0).token('same')).toBe(t0);
  });

  it('the first request, before tp 1 knows tp 0\'s key: the "done" waits for a read, both ranks release on it, bytes verified', async () => {
    const blocks = [3, 4, 5];
    const params = await p0.call<KvTransferParams>('hold', { dp: 0, requestId: 'first', blockIds: blocks });
    await p1.call('hold', { dp: 0, requestId: 'first', blockIds: blocks });
    expectVerified(await pull(params, [10, 11, 12]), 3);
    expect(await released(p0, p1, 'first')).toEqual(['done', 'done']);
    const held = await Promise.all([p0, p1].map(async (g, tp) => (await g.waitEvent((e) => e.event === 'released' && e.requestId === 'first' && e.tp === tp)).heldMs as number));
    console.log(`[token-keys] first request: held ${held.map((ms) => ms.toFixed(1)).join(' / ')} ms on tp 0 / tp 1 (tp 1 read tp 0's key on the way)`);
    expect((await metricsOf(p1, 0)).refused['bad-token']).toBe(0);
    for (const d of decode) expect((await d.call<Metrics>('metrics'))[0]!.metrics.notifies.sendFailed).toBe(0);
  });

  it('an early "done" (before hold) whose issuer\'s key is not known yet is kept; the later hold releases on it', async () => {
    // dp 1: tp 1 has not read tp 0's key of this dp group either.
    const [token] = await p0.call<string[]>('tokens', { dp: 1, requestIds: ['early'] });
    expect(await send('mooncake/kv/p/1/1', done('early', 1, token))).toBe('ACK');
    await until(async () => (await metricsOf(p1, 1)).early.held === 1, 'the early done to be kept');
    await p1.call('hold', { dp: 1, requestId: 'early', blockIds: [7, 8] });
    const ev = await p1.waitEvent((e) => e.event === 'released' && e.requestId === 'early');
    expect(ev).toMatchObject({ reason: 'done', dp: 1, tp: 1, consumers: [{ engineId: 'd', tpRank: 1, ok: true }] });
    const m = await metricsOf(p1, 1);
    expect(m.early.held).toBe(0);
    expect(m.refused['bad-token']).toBe(0);
  });

  it('a forged "done" while a key is unknown waits too, then is refused once a read begun after it finds no key that made it', async () => {
    // dp 2: tp 0 never started, so tp 1 never knows all the keys of its instance.
    const params = await p1.call<KvTransferParams>('hold', { dp: 2, requestId: 'lonely', blockIds: [1, 2] });
    const guessed = new RequestTokens(randomBytes(32), 'p', 2).token('lonely');
    expect(await send('mooncake/kv/p/2/1', done('lonely', 1, guessed))).toBe('ACK');
    await until(async () => (await metricsOf(p1, 2)).refused['bad-token'] === 1, 'the forged done to be refused');
    // No token at all: refused on arrival (the sender is told).
    expect(await send('mooncake/kv/p/2/1', done('lonely', 1, undefined))).toBe('REJECT_HANDSHAKE');
    const held = await p1.call<{ tp: number; held: string[] }[]>('held', { dp: 2 });
    expect(held[0]!.held).toEqual(['lonely']);
    expect((await metricsOf(p1, 2)).early.held).toBe(0);
    // The real one (it echoes tp 1's own params) releases it.
    expect(await send('mooncake/kv/p/2/1', done('lonely', 1, params.remote_token as string))).toBe('ACK');
    expect((await p1.waitEvent((e) => e.event === 'released' && e.requestId === 'lonely')).reason).toBe('done');
  });

  it('300 forged "done"s while a key is unknown: kept within the early buffer, all refused after a read', async () => {
    const before = (await metricsOf(p1, 2)).refused['bad-token'];
    const answers = await Promise.all(
      Array.from({ length: 300 }, (_, i) => send('mooncake/kv/p/2/1', done(`flood-${i}`, 1, new RequestTokens(randomBytes(32), 'p', 2).token(`flood-${i}`)))),
    );
    expect(answers.every((a) => a === 'ACK')).toBe(true);
    await until(async () => (await metricsOf(p1, 2)).refused['bad-token'] === before + 300, 'all 300 to be refused');
    const m = await metricsOf(p1, 2);
    expect(m.early.held).toBe(0);
    expect(m.refused['early-full']).toBe(0);
  });

  it('16 concurrent requests on dp 0 and 1, the params from either rank: all verified, both ranks release on "done"', async () => {
    await Promise.all(
      Array.from({ length: 16 }, async (_, i) => {
        const rid = `many-${i}`;
        const dp = i % 2;
        const base = 6 + (i >> 1) * 3; // distinct blocks per dp group
        const blocks = [base, base + 1, base + 2];
        const [a, b] = await Promise.all([p0, p1].map((g) => g.call<KvTransferParams>('hold', { dp, requestId: rid, blockIds: blocks })));
        const params = (i >> 1) % 2 === 0 ? a! : b!;
        expectVerified(await pull(params, [3 * i, 3 * i + 1, 3 * i + 2]), 3);
        expect(await released(p0, p1, rid)).toEqual(['done', 'done']);
      }),
    );
    for (const g of [p0, p1]) for (const dp of [0, 1]) expect((await metricsOf(g, dp)).refused['bad-token']).toBe(0);
  });

  it('forged "done"s are refused on both ranks, at once: a token under a guessed key, under another instance\'s published key', async () => {
    const blocks = [60, 61];
    const params = await p0.call<KvTransferParams>('hold', { dp: 0, requestId: 'forged', blockIds: blocks });
    await p1.call('hold', { dp: 0, requestId: 'forged', blockIds: blocks });
    const before = await Promise.all([p0, p1].map((g) => metricsOf(g, 0)));
    const guessed = new RequestTokens(randomBytes(32), 'p', 0).token('forged');
    const decodeKey = new RequestTokens(Buffer.from(entry('mooncake/kv/d/0/0').token_key!, 'base64url'), 'p', 0).token('forged');
    for (const tp of [0, 1]) {
      for (const token of [guessed, decodeKey]) expect(await send(`mooncake/kv/p/0/${tp}`, done('forged', tp, token))).toBe('REJECT_HANDSHAKE');
    }
    const after = await Promise.all([p0, p1].map((g) => metricsOf(g, 0)));
    for (const tp of [0, 1]) expect(after[tp]!.refused['bad-token'] - before[tp]!.refused['bad-token']).toBe(2);
    expect((await p0.call<{ held: string[] }[]>('held', { dp: 0 }))[0]!.held).toEqual(['forged']);
    expect((await p1.call<{ held: string[] }[]>('held', { dp: 0 }))[0]!.held).toEqual(['forged']);
    expectVerified(await pull(params, [30, 31]), 2);
    expect(await released(p0, p1, 'forged')).toEqual(['done', 'done']);
  });

  it('push: the decode ranks in two processes accept the push signals echoing the params of either of them', async () => {
    for (let i = 0; i < 4; i++) {
      const rid = `push-${i}`;
      const dBlocks = [2 * i, 2 * i + 1];
      const [a, b] = await Promise.all(decode.map((d) => d.call<KvTransferParams>('expect', { dp: 0, requestId: rid, blockIds: dBlocks, timeoutMs: 20_000 })));
      const params = i % 2 === 0 ? a! : b!;
      const pushed = (await Promise.all([p0, p1].map((g) => g.call<RankOutcome[]>('push', { dp: 0, params, blockIds: [50, 51] })))).flat();
      for (const o of pushed) expect(o, o.error).toMatchObject({ ok: true, failedBlockIds: [] });
      const got = (await Promise.all(decode.map((d) => d.call<RankOutcome[]>('awaitPush', { dp: 0, requestId: rid })))).flat();
      expectVerified(got, 2);
    }
  });
});

describe('holdKey set: the same key in both processes, nothing published', () => {
  let k0: KvGroup;
  let k1: KvGroup;
  const holdKey = 'an instance-wide secret, 32 chars';

  beforeAll(async () => {
    [k0, k1] = await Promise.all([0, 1].map((tp) => group('k', 'producer', [tp], { dpRanks: [0], options: { holdKey } })));
  });

  afterAll(async () => {
    await k0?.close();
    await k1?.close();
  });

  it('no key in the registry; both ranks make the same token; a pull releases both; forged tokens are refused', async () => {
    expect(entry('mooncake/kv/k/0/0')).not.toHaveProperty('token_key');
    expect(entry('mooncake/kv/k/0/1')).not.toHaveProperty('token_key');
    const params = await k1.call<KvTransferParams>('hold', { dp: 0, requestId: 'keyed', blockIds: [1, 2] });
    const p0 = await k0.call<KvTransferParams>('hold', { dp: 0, requestId: 'keyed', blockIds: [1, 2] });
    expect(p0.remote_token).toBe(params.remote_token);
    const guessed = new RequestTokens(randomBytes(32), 'k', 0).token('keyed');
    for (const tp of [0, 1]) expect(await send(`mooncake/kv/k/0/${tp}`, done('keyed', tp, guessed))).toBe('REJECT_HANDSHAKE');
    expectVerified(await pull(params, [5, 6]), 2);
    expect(await released(k0, k1, 'keyed')).toEqual(['done', 'done']);
  });
});

describe('a rank that restarts publishes a new key; the others read it and keep the old one', () => {
  let r0: KvGroup;
  let r1: KvGroup;
  const spawn = (tp: number) => group('r', 'producer', [tp], { dpRanks: [0], options: { heartbeatMs: 200 } });

  beforeAll(async () => {
    [r0, r1] = await Promise.all([spawn(0), spawn(1)]);
  });

  afterAll(async () => {
    await r0?.close();
    await r1?.close();
  });

  it('a hold made before the restart is released by a "done" echoing the old params; new params verify too', async () => {
    const oldParams = await r0.call<KvTransferParams>('hold', { dp: 0, requestId: 'before', blockIds: [1, 2] });
    await r1.call('hold', { dp: 0, requestId: 'before', blockIds: [1, 2] });
    const oldKey = entry('mooncake/kv/r/0/0').token_key;
    // Let tp 1 read tp 0's entry (every 200 ms), then restart tp 0.
    await new Promise((r) => setTimeout(r, 600));
    await r0.close();
    r0 = await spawn(0);
    expect(entry('mooncake/kv/r/0/0').token_key).not.toBe(oldKey);
    await new Promise((r) => setTimeout(r, 1000));
    // tp 1 still holds "before" (tp 0's hold went with its process): the decode's done to tp 1 echoes the
    // old params. Only decode tp 1 pulls (decode tp 0 would read blocks the new tp 0 does not hold).
    const [o] = await decode[1]!.call<RankOutcome[]>('pull', { dp: 0, params: oldParams, blockIds: [3, 4] });
    expect(o, o!.error).toMatchObject({ ok: true, mismatches: 0 });
    expect((await r1.waitEvent((e) => e.event === 'released' && e.requestId === 'before')).reason).toBe('done');
    const params = await r0.call<KvTransferParams>('hold', { dp: 0, requestId: 'after', blockIds: [5, 6] });
    await r1.call('hold', { dp: 0, requestId: 'after', blockIds: [5, 6] });
    expectVerified(await pull(params, [7, 8]), 2);
    expect(await released(r0, r1, 'after')).toEqual(['done', 'done']);
    expect((await metricsOf(r1, 0)).refused['bad-token']).toBe(0);
  });
});
