// The engine's received-notify buffer: bounded by entries and bytes, a size limit per notify, and a
// policy when full. A refused notify fails the sender's sendNotify (so it knows); a dropped one was
// announced first; both are counted in stats() and reported as 'notifyDropped'.
import { afterEach, describe, expect, it } from 'vitest';
import { TransferEngine, type NotifyDropInfo, type TransferEngineOptions } from '../../lib';

const base = { metadataServer: 'P2PHANDSHAKE', bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } as const;
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function engine(o: Partial<TransferEngineOptions> = {}): Promise<TransferEngine> {
  const e = await TransferEngine.create({ ...base, ...o });
  cleanups.push(() => e.close());
  return e;
}

const notify = (i: number, bytes: number) => ({ name: `n${i}`, msg: 'm'.repeat(bytes - `n${i}`.length) });

describe('received notifies', () => {
  it('drop-oldest (default): every notify is acknowledged and emitted; the buffer keeps the newest within maxBytes', async () => {
    const b = await engine({ notifies: { maxBytes: 8 * 1024 } });
    const a = await engine();
    const seen: string[] = [];
    const dropped: NotifyDropInfo[] = [];
    b.on('notify', (n) => seen.push(n.name));
    b.on('notifyDropped', (d) => dropped.push(d));
    for (let i = 0; i < 12; i++) await a.sendNotify(b.localServerName, notify(i, 1024));
    expect(seen).toHaveLength(12);
    expect(dropped).toEqual(Array.from({ length: 4 }, (_, i) => ({ reason: 'overflow', name: `n${i}`, bytes: 1024 })));
    expect(b.stats()).toMatchObject({ notifiesReceived: 12, notifiesQueued: 8, notifiesQueuedBytes: 8192, notifiesDropped: 4, notifiesRejected: 0 });
    expect(b.getNotifies().map((n) => n.name)).toEqual(Array.from({ length: 8 }, (_, i) => `n${i + 4}`));
    expect(b.stats().notifiesQueuedBytes).toBe(0);
  });

  it('a notify over maxMessageBytes is refused: the sender gets REJECT_HANDSHAKE, nothing is emitted or kept', async () => {
    const b = await engine({ notifies: { maxMessageBytes: 4096 } });
    const a = await engine();
    const seen: string[] = [];
    const dropped: NotifyDropInfo[] = [];
    b.on('notify', (n) => seen.push(n.name));
    b.on('notifyDropped', (d) => dropped.push(d));
    await expect(a.sendNotify(b.localServerName, notify(1, 4097))).rejects.toMatchObject({ code: 'REJECT_HANDSHAKE' });
    await a.sendNotify(b.localServerName, notify(2, 4096));
    expect(seen).toEqual(['n2']);
    expect(dropped).toEqual([{ reason: 'too-large', name: 'n1', bytes: 4097 }]);
    expect(b.stats()).toMatchObject({ notifiesReceived: 1, notifiesRejected: 1 });
  });

  it("whenFull 'reject': once the buffer is full new notifies fail at the sender; an acknowledged notify is never discarded", async () => {
    const b = await engine({ notifies: { capacity: 3, whenFull: 'reject' } });
    const a = await engine();
    for (let i = 0; i < 3; i++) await a.sendNotify(b.localServerName, notify(i, 100));
    await expect(a.sendNotify(b.localServerName, notify(3, 100))).rejects.toMatchObject({ code: 'REJECT_HANDSHAKE' });
    expect(b.stats()).toMatchObject({ notifiesQueued: 3, notifiesDropped: 0, notifiesRejected: 1 });
    expect(b.getNotifies().map((n) => n.name)).toEqual(['n0', 'n1', 'n2']);
    await a.sendNotify(b.localServerName, notify(4, 100)); // room again
    expect(b.getNotifies().map((n) => n.name)).toEqual(['n4']);
  });

  it('validates the notifies option', async () => {
    for (const bad of [{ capacity: -1 }, { maxBytes: 1.5 }, { maxMessageBytes: 'x' }, { whenFull: 'block' }, 5]) {
      await expect(TransferEngine.create({ ...base, notifies: bad as never })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
    }
  });
});
