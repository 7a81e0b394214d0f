/**
 * The prefill and decode instance pools: load accounting, ejection after consecutive failures, re-admission
 * after consecutive good health probes, and the periodic health checker.
 */
import * as http from 'node:http';
import { MooncakeError } from '../errors';
import type { ProxyLogger, ResolvedHealthCheck, Role } from './options';
import { normalizeInstanceUrl } from './options';
import type { LoadView, Policy } from './policies';

/** A read-only view of one instance, as `stats()`, `/admin/instances` and `/metrics` show it. */
export interface InstanceSnapshot {
  role: Role;
  /** Origin, 'http://host:port'. */
  url: string;
  /** False while ejected. */
  healthy: boolean;
  inFlight: number;
  inFlightTokens: number;
  /** Requests sent to the instance (each attempt counts). */
  requests: number;
  /** Attempts that failed to connect or lost the connection before any response byte. */
  connectFailures: number;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  /** Times the instance was ejected. */
  ejections: number;
  lastError?: string;
}

/**
 * One instance and its load and health counters. Read-only from outside: the pool changes them through
 * the methods below.
 */
export class Instance implements LoadView {
  private s = { inFlight: 0, inFlightTokens: 0, requests: 0, connectFailures: 0, consecutiveFailures: 0, consecutiveSuccesses: 0, ejections: 0 };
  private up = true;
  private gone = false;
  private error: string | undefined;

  constructor(readonly role: Role, readonly url: string) {}

  get inFlight(): number {
    return this.s.inFlight;
  }
  get inFlightTokens(): number {
    return this.s.inFlightTokens;
  }
  get requests(): number {
    return this.s.requests;
  }
  get connectFailures(): number {
    return this.s.connectFailures;
  }
  get consecutiveFailures(): number {
    return this.s.consecutiveFailures;
  }
  get consecutiveSuccesses(): number {
    return this.s.consecutiveSuccesses;
  }
  get ejections(): number {
    return this.s.ejections;
  }
  /** False while ejected. */
  get healthy(): boolean {
    return this.up;
  }
  /** True once taken out of its pool. */
  get removed(): boolean {
    return this.gone;
  }
  get lastError(): string | undefined {
    return this.error;
  }

  acquire(tokens: number): void {
    this.s.inFlight++;
    this.s.inFlightTokens += tokens;
    this.s.requests++;
  }

  release(tokens: number): void {
    this.s.inFlight = Math.max(0, this.s.inFlight - 1);
    this.s.inFlightTokens = Math.max(0, this.s.inFlightTokens - tokens);
  }

  /** @internal */
  markRemoved(): void {
    this.gone = true;
  }

  /** @internal A connection failure before any response byte. */
  connectFailed(error: string): void {
    this.s.connectFailures++;
    this.error = error;
  }

  /** @internal The instance answered: passive failures start again from zero. */
  responded(): void {
    if (this.up) this.s.consecutiveFailures = 0;
  }

  /** @internal A good probe; true when it re-admits the instance. */
  probeOk(healthyThreshold: number): boolean {
    this.s.consecutiveFailures = 0;
    this.s.consecutiveSuccesses++;
    if (this.up || this.s.consecutiveSuccesses < healthyThreshold) return false;
    this.up = true;
    return true;
  }

  /** @internal A failure (probe or connection); true when it ejects the instance. */
  failed(unhealthyThreshold: number, error?: string): boolean {
    if (error !== undefined) this.error = error;
    this.s.consecutiveSuccesses = 0;
    this.s.consecutiveFailures++;
    if (!this.up || this.s.consecutiveFailures < unhealthyThreshold) return false;
    this.up = false;
    this.s.ejections++;
    return true;
  }

  snapshot(): InstanceSnapshot {
    const s: InstanceSnapshot = { role: this.role, url: this.url, healthy: this.up, ...this.s };
    if (this.error !== undefined) s.lastError = this.error;
    return s;
  }
}

export class InstancePool {
  private readonly byUrl = new Map<string, Instance>();

  constructor(
    readonly role: Role,
    readonly policy: Policy,
    private readonly health: ResolvedHealthCheck,
    private readonly log: ProxyLogger,
  ) {}

  get size(): number {
    return this.byUrl.size;
  }

  all(): Instance[] {
    return [...this.byUrl.values()];
  }

  get(url: string): Instance | undefined {
    return this.byUrl.get(normalizeInstanceUrl(url, `${this.role} instance`));
  }

  has(url: string): boolean {
    return this.get(url) !== undefined;
  }

  healthyCount(): number {
    let n = 0;
    for (const i of this.byUrl.values()) if (i.healthy) n++;
    return n;
  }

  /** Adds an instance (it starts healthy). Throws INVALID_CONFIG for a bad address or a duplicate. */
  add(url: string): Instance {
    const origin = normalizeInstanceUrl(url, `${this.role} instance`);
    if (this.byUrl.has(origin)) {
      throw new MooncakeError('INVALID_CONFIG', `${this.role} instance ${origin} is already in the pool`, { details: { role: this.role, url: origin } });
    }
    const inst = new Instance(this.role, origin);
    this.byUrl.set(origin, inst);
    this.log('info', `added ${this.role} instance ${origin}`, { role: this.role, url: origin });
    return inst;
  }

  /** Removes an instance from routing; requests already on it finish. Returns it, or undefined if absent. */
  remove(url: string): Instance | undefined {
    const origin = normalizeInstanceUrl(url, `${this.role} instance`);
    const inst = this.byUrl.get(origin);
    if (inst === undefined) return undefined;
    this.byUrl.delete(origin);
    inst.markRemoved();
    this.log('info', `removed ${this.role} instance ${origin}`, { role: this.role, url: origin, inFlight: inst.inFlight });
    return inst;
  }

  /**
   * Chooses an instance for one attempt: a healthy instance not yet tried for this request; else a healthy one
   * already tried; only when no instance is healthy, an ejected one not yet tried; else any. A request therefore
   * never goes to an ejected instance while a healthy one exists, and a retry goes to another instance when
   * there is one.
   */
  pick(tried: ReadonlySet<Instance> = new Set()): Instance | undefined {
    const all = this.all();
    const tiers: Instance[][] = [
      all.filter((i) => i.healthy && !tried.has(i)),
      all.filter((i) => i.healthy),
      all.filter((i) => !tried.has(i)),
      all,
    ];
    for (const tier of tiers) {
      if (tier.length > 0) return this.policy.pick(tier);
    }
    return undefined;
  }

  /** A connection failure before any response byte (passive health). */
  recordConnectFailure(inst: Instance, error: unknown): void {
    inst.connectFailed(error instanceof Error ? error.message : String(error));
    if (this.health.enabled) this.fail(inst, 'connection failure');
  }

  /** The instance answered (any status): the connection works, so passive failures start again from zero. */
  recordResponse(inst: Instance): void {
    inst.responded();
  }

  /** Result of one active health probe. */
  recordProbe(inst: Instance, ok: boolean, error?: string): void {
    if (inst.removed) return;
    if (ok) {
      if (inst.probeOk(this.health.healthyThreshold)) this.log('info', `re-admitted ${this.role} instance ${inst.url}`, { role: this.role, url: inst.url });
    } else {
      this.fail(inst, error ?? 'health check failed', error);
    }
  }

  private fail(inst: Instance, why: string, error?: string): void {
    if (inst.failed(this.health.unhealthyThreshold, error)) {
      this.log('warn', `ejected ${this.role} instance ${inst.url} after ${inst.consecutiveFailures} consecutive failures (${why})`, {
        role: this.role,
        url: inst.url,
      });
    }
  }
}

/** Probes every instance of the pools with GET <path> every interval; a 2xx answer within the timeout is good. */
export class HealthChecker {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private stopped = false;
  private readonly probes = new Set<http.ClientRequest>();
  private round: Promise<void> | undefined;

  constructor(
    private readonly pools: readonly InstancePool[],
    private readonly opts: ResolvedHealthCheck,
    private readonly agent: http.Agent,
  ) {}

  start(): void {
    if (!this.opts.enabled || this.running || this.stopped) return;
    this.running = true;
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.round = this.checkAll().finally(() => {
        this.round = undefined;
        this.schedule();
      });
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  /** One probe round over every instance (also used to probe right away after an instance is added). */
  async checkAll(): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (const pool of this.pools) for (const inst of pool.all()) jobs.push(this.check(pool, inst));
    await Promise.all(jobs);
  }

  async check(pool: InstancePool, inst: Instance): Promise<void> {
    if (this.stopped || !this.opts.enabled) return;
    const result = await this.probe(inst.url);
    if (this.stopped) return;
    pool.recordProbe(inst, result.ok, result.error);
  }

  private probe(origin: string): Promise<{ ok: boolean; error?: string }> {
    return new Promise((resolve) => {
      let done = false;
      const finish = (ok: boolean, error?: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.probes.delete(req);
        resolve(error === undefined ? { ok } : { ok, error });
      };
      const url = new URL(this.opts.path, origin);
      const req = http.request(url, { method: 'GET', agent: this.agent, headers: { accept: '*/*' } }, (res) => {
        const status = res.statusCode ?? 0;
        res.resume();
        res.on('error', () => {});
        const ok = status >= 200 && status < 300;
        finish(ok, ok ? undefined : `health check answered ${status}`);
      });
      const timer = setTimeout(() => {
        req.destroy();
        finish(false, `health check timed out after ${this.opts.timeoutMs} ms`);
      }, this.opts.timeoutMs);
      req.on('error', (err) => finish(false, `health check failed: ${err.message}`));
      this.probes.add(req);
      req.end();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    for (const req of this.probes) req.destroy();
    this.probes.clear();
    await this.round;
  }
}
