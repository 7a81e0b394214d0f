import { describe, expect, it } from 'vitest';
import type { KvFailureRecord } from '../../lib/kv/ledger';
import { KvMetrics } from '../../lib/kv/metrics';
import { renderText } from '../../lib/metrics/text';

describe('KvMetrics families', () => {
  it('exports the failure ledger as mooncake_kv_failures_total by stage', () => {
    const m = new KvMetrics();
    const record: KvFailureRecord = { requestId: 'r', stage: 'TIMEOUT', code: 'TIMEOUT', detail: 'x', advice: 'recompute', side: 'prefill', sideChannel: 'mooncake-node', blockIds: [1], at: 0 };
    m.ledger.add({ ...record, stage: 'TIMEOUT' });
    m.ledger.add({ ...record, stage: 'TIMEOUT' });
    m.ledger.add({ ...record, stage: 'NOTIFY', code: 'CONNECT_FAILED' });
    const text = renderText(m.families(m.snapshot({ held: 0, bytes: 0, expired: 0 }), { side: 'prefill', engine: 'e' }));
    expect(text).toContain('mooncake_kv_failures_total{side="prefill",engine="e",stage="TIMEOUT"} 2');
    expect(text).toContain('mooncake_kv_failures_total{side="prefill",engine="e",stage="NOTIFY"} 1');
    expect(text).toContain('mooncake_kv_failures_total{side="prefill",engine="e",stage="ABORT"} 0');
    expect(m.snapshot({ held: 0, bytes: 0, expired: 0 }).failures).toMatchObject({ TIMEOUT: 2, NOTIFY: 1, SEND: 0 });
  });
});
