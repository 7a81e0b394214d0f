/**
 * The target of `bench kv`: the side that does not issue transfers (the prefill instance when the
 * decode pulls, the decode instance when the prefill pushes), in its own process, on this host
 * (loopback) or another. It builds its ranks for each case on the initiator's request, holds or expects
 * requests a phase ahead, and reports its CPU and event-loop delay per phase.
 */
import { MooncakeError } from '../../errors';
import type { KvExpectation } from '../../kv/consumer';
import type { KvTransferOutcome } from '../../kv/metrics';
import type { KvRelease } from '../../kv/producer';
import { CpuMeter, HealthMeter } from '../stats';
import { otherSide, initiatorSide, slotBlocks, type KvCaseSpec } from './cases';
import { ControlServer } from './control';
import { RankGroup, type RankEnv } from './ranks';

/** A request the initiator announces: its id, the dp rank on this side, its slot. */
export interface TargetRequest {
  requestId: string;
  dp: number;
  slot: number;
}

interface HostedCase {
  group: RankGroup;
  holds: Map<string, Promise<KvRelease>[]>;
  expects: Map<string, KvExpectation[]>;
}

export interface TargetPhaseStats {
  cpuPercent: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
}

/** What the target answers; also used in-process by tests. */
export class KvBenchTarget {
  private readonly cases = new Map<string, HostedCase>();
  private cpu = new CpuMeter();
  private health = new HealthMeter(60_000);

  constructor(private readonly env: RankEnv) {}

  private hosted(id: unknown): HostedCase {
    const c = typeof id === 'string' ? this.cases.get(id) : undefined;
    if (!c) throw new MooncakeError('INVALID_ARGUMENT', `case ${String(id)} is not set up on the target`);
    return c;
  }

  async handle(cmd: string, a: Record<string, unknown>): Promise<unknown> {
    switch (cmd) {
      case 'setup': {
        const spec = a.spec as KvCaseSpec;
        if (this.cases.has(spec.id)) throw new MooncakeError('INVALID_ARGUMENT', `case ${spec.id} is already set up`);
        const side = otherSide(initiatorSide(spec));
        const group = await RankGroup.open(spec, side, this.env);
        if (side === 'prefill') group.fill([...Array(spec.slots).keys()]);
        this.cases.set(spec.id, { group, holds: new Map(), expects: new Map() });
        return { side, ranks: spec[side].dpSize * spec[side].tpSize, pid: process.pid };
      }
      case 'hold': {
        // Pull: every tp rank of the request's dp group holds its blocks; the params come from rank 0.
        const c = this.hosted(a.caseId);
        return (a.requests as TargetRequest[]).map((r) => {
          const ranks = c.group.producers[r.dp];
          const blocks = slotBlocks(c.group.spec, 'prefill', r.slot);
          const holds = ranks.map((p) => p.hold(r.requestId, blocks, { promptTokens: c.group.spec.promptTokens }));
          c.holds.set(r.requestId, holds.map((h) => h.released));
          return holds[0].params;
        });
      }
      case 'expect': {
        const c = this.hosted(a.caseId);
        return (a.requests as TargetRequest[]).map((r) => {
          const ranks = c.group.consumers[r.dp];
          const blocks = slotBlocks(c.group.spec, 'decode', r.slot);
          const xs = ranks.map((d) => d.expect(r.requestId, blocks, { timeoutMs: 600_000, promptTokens: c.group.spec.promptTokens }));
          c.expects.set(r.requestId, xs);
          return xs[0].params;
        });
      }
      case 'settled': {
        // How the announced requests ended on this side: holds released (and why), expectations complete.
        const c = this.hosted(a.caseId);
        const ids = a.requestIds as string[];
        const timeoutMs = typeof a.timeoutMs === 'number' ? a.timeoutMs : 30_000;
        const reasons: Record<string, number> = {};
        let ok = 0;
        let failed = 0;
        const wait = async (): Promise<void> => {
          for (const id of ids) {
            for (const h of c.holds.get(id) ?? []) {
              const r = await h;
              reasons[r.reason] = (reasons[r.reason] ?? 0) + 1;
            }
            for (const x of c.expects.get(id) ?? []) {
              const o: KvTransferOutcome = await x.done;
              if (o.ok) ok++;
              else failed++;
            }
            c.holds.delete(id);
            c.expects.delete(id);
          }
        };
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new MooncakeError('TIMEOUT', `requests not settled on the target within ${timeoutMs} ms (released: ${JSON.stringify(reasons)}, received ok ${ok}, failed ${failed})`)), timeoutMs);
        });
        try {
          await Promise.race([wait(), late]);
        } finally {
          clearTimeout(timer);
        }
        return { released: reasons, received: { ok, failed } };
      }
      case 'check': {
        const c = this.hosted(a.caseId);
        return c.group.check(a.dp as number, a.slots as number[]);
      }
      case 'clear': {
        this.hosted(a.caseId).group.clear(a.slots as number[]);
        return true;
      }
      case 'stats': {
        const h = this.health.stop();
        const s: TargetPhaseStats = { cpuPercent: this.cpu.percent(), loopDelayP99Ms: h.loopDelayP99Ms, loopDelayMaxMs: h.loopDelayMaxMs };
        this.cpu = new CpuMeter();
        this.health = new HealthMeter(60_000);
        return s;
      }
      case 'teardown': {
        const c = this.hosted(a.caseId);
        this.cases.delete(c.group.spec.id);
        for (const xs of c.expects.values()) for (const x of xs) x.cancel();
        await c.group.close();
        return true;
      }
      default:
        throw new MooncakeError('INVALID_ARGUMENT', `unknown control command '${cmd}'`);
    }
  }

  async close(): Promise<void> {
    for (const c of this.cases.values()) {
      for (const xs of c.expects.values()) for (const x of xs) x.cancel();
      await c.group.close();
    }
    this.cases.clear();
    this.health.stop();
  }
}

/**
 * `bench kv --mode target`: serves one initiator on the control port until `stop` resolves (a signal, or
 * stdin closing when a loopback parent drives it). Prints `{ready, control}` first.
 */
export async function serveKvTarget(env: RankEnv, controlPort: number, announce: (ready: { ready: true; control: string; pid: number }) => void, stop: Promise<void>): Promise<void> {
  const target = new KvBenchTarget(env);
  const server = new ControlServer((cmd, args) => target.handle(cmd, args));
  try {
    const addr = await server.listen(controlPort, env.host);
    announce({ ready: true, control: `${addr.host}:${addr.port}`, pid: process.pid });
    await stop;
  } finally {
    await server.close();
    await target.close();
  }
}
