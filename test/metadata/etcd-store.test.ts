// The etcd backend against real etcd servers started on loopback (Debian's etcd-server).
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { MooncakeError } from '../../lib/errors';
import { EtcdMetadataStore } from '../../lib/metadata/etcd-store';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { eventually, skipWithoutEtcd, startEtcd, startEtcdCluster, type EtcdCluster } from '../helpers/etcd';
import { timedRejection } from '../helpers/rejection';
import { freePort } from '../helpers/server-process';

const skip = skipWithoutEtcd('etcd-store');
const stores: MetadataStore[] = [];
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close().catch(() => undefined)));
});

function store(conn: string, options: Parameters<typeof createMetadataStore>[1] = {}): MetadataStore {
  const s = createMetadataStore(conn, options);
  stores.push(s);
  return s;
}

/** A key as etcd itself holds it, through its JSON gateway (independent of the etcd3 client). */
async function raw(endpoint: string, key: string): Promise<{ value: string; lease: string } | undefined> {
  const res = await fetch(`http://${endpoint}/v3/kv/range`, {
    method: 'POST',
    body: JSON.stringify({ key: Buffer.from(key).toString('base64') }),
    signal: AbortSignal.timeout(5000),
  });
  const body = (await res.json()) as { kvs?: { value?: string; lease?: string }[] };
  const kv = body.kvs?.[0];
  if (!kv) return undefined;
  return { value: Buffer.from(kv.value ?? '', 'base64').toString('utf8'), lease: kv.lease ?? '0' };
}


describe.skipIf(skip)('etcd metadata store (one member)', () => {
  let etcd: EtcdCluster;
  let endpoint: string;
  beforeAll(async () => {
    etcd = await startEtcd();
    endpoint = etcd.members[0].endpoint;
  });
  afterAll(() => etcd?.stop());

  test('etcd://host:port: plain GET / SET / DEL of the exact text under the exact key, no lease', async () => {
    const s = store(`etcd://${endpoint}`);
    expect(s).toBeInstanceOf(EtcdMetadataStore);
    expect(s.url).toBe(`etcd://${endpoint}`);
    expect(s.renewal).toBe('client');
    const key = 'mooncake/ram/store-a';
    expect(await s.get(key)).toBeUndefined();
    const value = '{"buffers":[],"name":"store-a","note":"é✓"}';
    await s.set(key, value);
    expect(await s.get(key)).toBe(value);
    expect(await raw(endpoint, key)).toEqual({ value, lease: '0' });
    await s.set(key, '{"v":2}');
    expect(await s.get(key)).toBe('{"v":2}');
    expect(await s.remove(key)).toBe(true);
    expect(await s.remove(key)).toBe(false);
    expect(await s.get(key)).toBeUndefined();
    expect(await raw(endpoint, key)).toBeUndefined();
  });

  test('no scheme means etcd (upstream rule); endpoints split on , and ; with blanks ignored', async () => {
    const a = store(endpoint);
    expect(a).toBeInstanceOf(EtcdMetadataStore);
    await a.set('mooncake/rpc_meta/x', '{"ip_or_host_name":"127.0.0.1","rpc_port":1}');
    const b = store(`etcd://${endpoint}; ,${endpoint}`);
    expect((b as EtcdMetadataStore).endpoints).toEqual([endpoint, endpoint]);
    expect(await b.get('mooncake/rpc_meta/x')).toBe('{"ip_or_host_name":"127.0.0.1","rpc_port":1}');
    await b.remove('mooncake/rpc_meta/x');
  });

  test('bad endpoints are INVALID_CONFIG at creation', () => {
    expect(() => createMetadataStore('etcd://')).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => createMetadataStore('etcd://host-without-port')).toThrow(/invalid etcd endpoint 'host-without-port'/);
    expect(() => new EtcdMetadataStore(['127.0.0.1:2379'], { timeoutMs: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });

  test('ttlMs attaches the entry to a lease the open store keeps alive; close() revokes it', async () => {
    const s = store(`etcd://${endpoint}`) as EtcdMetadataStore;
    await s.set('mooncake/ram/leased', '{"a":1}', { ttlMs: 1000 });
    await s.set('mooncake/rpc_meta/leased', '{"b":2}', { ttlMs: 1000 });
    const first = await raw(endpoint, 'mooncake/ram/leased');
    expect(first?.lease).not.toBe('0');
    // Both entries share the store's lease for that TTL.
    expect((await raw(endpoint, 'mooncake/rpc_meta/leased'))?.lease).toBe(first?.lease);
    expect(s.leasesGranted).toBe(1);
    // Well past the TTL, the client's keep-alive has kept them.
    await new Promise((r) => setTimeout(r, 3500));
    expect(await s.get('mooncake/ram/leased')).toBe('{"a":1}');
    await s.close();
    expect(await raw(endpoint, 'mooncake/ram/leased')).toBeUndefined();
    expect(await raw(endpoint, 'mooncake/rpc_meta/leased')).toBeUndefined();
    await expect(s.get('x')).rejects.toMatchObject({ code: 'CLOSED' });
  });

  test('an aborted GET rejects with ABORT_ERR', async () => {
    const s = store(`etcd://${endpoint}`);
    const ac = new AbortController();
    ac.abort();
    await expect(s.get('k', { signal: ac.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
  });
});

describe.skipIf(skip)('etcd metadata store under faults', () => {
  test('nothing listening: METADATA naming the endpoints, fast', async () => {
    const port = await freePort();
    const s = store(`etcd://127.0.0.1:${port}`, { timeoutMs: 3000 });
    const { error, ms } = await timedRejection(s.get('mooncake/ram/x'));
    expect(error).toBeInstanceOf(MooncakeError);
    expect(error.code).toBe('METADATA');
    expect(error.message).toMatch(new RegExp(`cannot reach etcd at 127\\.0\\.0\\.1:${port}`));
    expect(error.details).toMatchObject({ backend: 'etcd', endpoints: [`127.0.0.1:${port}`], key: 'mooncake/ram/x', op: 'GET' });
    expect(ms).toBeLessThan(3000 + 2000);
    // Later calls (circuit breaker open) still say why.
    const again = await timedRejection(s.set('mooncake/ram/x', '{}'));
    expect(again.error.code).toBe('METADATA');
    expect(again.error.message).toMatch(/ECONNREFUSED|No connection established/);
  });

  test('a scheme-less string that is really an HTTP server: the error says what upstream does with it', async () => {
    const port = await freePort();
    const s = store(`127.0.0.1:${port}`, { timeoutMs: 1500 });
    const { error } = await timedRejection(s.get('k'));
    expect(error.code).toBe('METADATA');
    expect(error.message).toContain(`for an HTTP metadata server write http://127.0.0.1:${port}/metadata`);
  });

  test('a hung member (SIGSTOP): METADATA within the deadline; works again once it resumes', async () => {
    const etcd = await startEtcd();
    try {
      const s = store(etcd.connectionString, { timeoutMs: 1500 });
      await s.set('k', 'v');
      etcd.members[0].pause();
      const { error, ms } = await timedRejection(s.get('k'));
      expect(error.code).toBe('METADATA');
      expect(error.message).toMatch(/did not answer GET 'k' within 1500 ms/);
      expect(error.details).toMatchObject({ backend: 'etcd', timeoutMs: 1500 });
      expect(ms).toBeLessThan(1500 + 2000);
      etcd.members[0].resume();
      expect(await eventually(async () => (await s.get('k')) === 'v', 20_000, 200)).toBe(true);
    } finally {
      await etcd.stop();
    }
  });

  test('a restarted etcd (data kept): the same store recovers without being recreated', async () => {
    const etcd = await startEtcd();
    try {
      const s = store(etcd.connectionString, { timeoutMs: 2000 });
      await s.set('mooncake/ram/kept', '{"k":1}');
      await etcd.members[0].stop();
      expect((await timedRejection(s.get('mooncake/ram/kept'))).error.code).toBe('METADATA');
      await etcd.members[0].restart();
      expect(await eventually(async () => (await s.get('mooncake/ram/kept')) === '{"k":1}', 20_000, 200)).toBe(true);
    } finally {
      await etcd.stop();
    }
  });
});

describe.skipIf(skip)('etcd metadata store on a 3-member cluster', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
  });
  afterAll(() => cluster?.stop());

  async function leaderIndex(): Promise<number> {
    for (let i = 0; i < cluster.members.length; i++) {
      const m = cluster.members[i];
      if (m.process?.exitCode !== null || m.process?.signalCode !== null) continue;
      try {
        const res = await fetch(`http://${m.endpoint}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(2000) });
        const st = (await res.json()) as { leader?: string; header?: { member_id?: string } };
        if (st.leader && st.leader === st.header?.member_id) return i;
      } catch {
        // try the next member
      }
    }
    return -1;
  }

  test('losing a follower: every operation keeps succeeding', async () => {
    const s = store(cluster.connectionString);
    await s.set('mooncake/ram/c', '{"n":0}');
    const leader = await leaderIndex();
    expect(leader).toBeGreaterThanOrEqual(0);
    const follower = cluster.members[(leader + 1) % 3];
    await follower.kill();
    for (let i = 1; i <= 20; i++) {
      await s.set('mooncake/ram/c', `{"n":${i}}`);
      expect(await s.get('mooncake/ram/c')).toBe(`{"n":${i}}`);
    }
    await follower.restart();
  });

  test('losing the leader: after the election, operations succeed again on the two others', async () => {
    const s = store(cluster.connectionString);
    await s.set('mooncake/ram/l', '{"n":0}');
    const leader = await leaderIndex();
    expect(leader).toBeGreaterThanOrEqual(0);
    await cluster.members[leader].kill();
    // An election takes a few heartbeats; operations in between may fail with a clear METADATA error.
    const errors: string[] = [];
    const ok = await eventually(async () => {
      try {
        await s.set('mooncake/ram/l', '{"n":1}');
        return true;
      } catch (e) {
        errors.push((e as MooncakeError).code);
        return false;
      }
    }, 30_000, 200);
    expect(ok).toBe(true);
    expect(errors.every((c) => c === 'METADATA')).toBe(true);
    for (let i = 2; i <= 20; i++) {
      await s.set('mooncake/ram/l', `{"n":${i}}`);
      expect(await s.get('mooncake/ram/l')).toBe(`{"n":${i}}`);
    }
    expect(await leaderIndex()).not.toBe(leader);
  });
});
