// Engines on a 3-member etcd cluster (loopback ports) keep working when a member, even the leader, dies.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TransferEngine } from '../../lib';
import { eventually, skipWithoutEtcd, startEtcdCluster, type EtcdCluster } from '../helpers/etcd';

const opts = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;
const skip = skipWithoutEtcd('metadata-etcd-cluster');

describe.skipIf(skip)('engines on a 3-member etcd cluster', () => {
  let cluster: EtcdCluster;
  const cleanups: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
  });
  afterAll(() => cluster?.stop());
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
  });

  async function engine(o: Partial<Parameters<typeof TransferEngine.create>[0]> = {}): Promise<TransferEngine> {
    const e = await TransferEngine.create({ metadataServer: cluster.connectionString, metadataRefreshMs: 500, ...opts, ...o });
    e.on('metadataError', () => undefined);
    cleanups.push(() => e.close());
    return e;
  }

  async function leader(): Promise<number> {
    for (let i = 0; i < cluster.members.length; i++) {
      try {
        const res = await fetch(`http://${cluster.members[i].endpoint}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(2000) });
        const st = (await res.json()) as { leader?: string; header?: { member_id?: string } };
        if (st.leader && st.leader === st.header?.member_id) return i;
      } catch {
        // next
      }
    }
    return -1;
  }

  it('the leader dies: publication resumes after the election; peers open, refresh and transfer', async () => {
    expect(cluster.connectionString).toMatch(/^etcd:\/\/127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+$/);
    const a = await engine({ localServerName: 'cl-a' });
    const z = await engine({ localServerName: 'cl-z' });
    const ra = await a.registerMemory(Buffer.alloc(8192));
    const rz1 = await z.allocateManagedBuffer(4096);
    rz1.buffer!.fill(1);
    const seg = await a.openSegment('cl-z');
    await a.read(seg, [{ local: ra, remote: seg.address(0), length: 4096 }]);
    expect(ra.buffer!.subarray(0, 4096).every((x) => x === 1)).toBe(true);

    const lead = await leader();
    expect(lead).toBeGreaterThanOrEqual(0);
    await cluster.members[lead].kill();

    // Registering publishes the descriptor; during the election that may fail with METADATA (the
    // region is then rolled back), so retry the way an application would.
    let rz2: Awaited<ReturnType<TransferEngine['allocateManagedBuffer']>> | undefined;
    const codes: string[] = [];
    expect(
      await eventually(async () => {
        try {
          rz2 = await z.allocateManagedBuffer(4096);
          return true;
        } catch (e) {
          codes.push((e as { code: string }).code);
          return false;
        }
      }, 30_000, 200),
    ).toBe(true);
    expect(codes.every((c) => c === 'METADATA')).toBe(true);
    rz2!.buffer!.fill(2);

    const fresh = await a.openSegment('cl-z', { refresh: true });
    expect(fresh.buffers).toHaveLength(2);
    await a.read(fresh, [{ local: ra, localOffset: 4096, remote: rz2!.address, length: 4096 }]);
    expect(ra.buffer!.subarray(4096).every((x) => x === 2)).toBe(true);

    // A newcomer joins through the two surviving members.
    const c = await engine({ localServerName: 'cl-c' });
    const rc = await c.registerMemory(Buffer.alloc(4096));
    const segZ = await c.openSegment('cl-z');
    await c.read(segZ, [{ local: rc, remote: rz1.address, length: 4096 }]);
    expect(rc.buffer!.every((x) => x === 1)).toBe(true);

    await cluster.members[lead].restart();
  });
});
