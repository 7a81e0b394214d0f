/**
 * Keeps this engine's entries in the metadata store the way upstream peers expect them:
 * `mooncake/rpc_meta/<name>` = {ip_or_host_name, rpc_port} and `mooncake/ram/<name>` = the segment
 * descriptor, rewritten whole after every (un)registration, checked periodically and republished when
 * the store lost them (e.g. a restarted HTTP metadata server), and deleted on close (rpc_meta first).
 *
 * Liveness (opt-in, `ttlMs`): the entries are written so that they disappear about `ttlMs` after this
 * engine stops renewing them (a SIGKILLed process, a lost host). Stores whose client renews them
 * (`renewal: 'client'`, etcd leases) only need the periodic check, run at least once per TTL so a lost
 * lease is replaced quickly; other stores (redis `SET … PX`, an HTTP server with a TTL) get both entries
 * written again every `ttlMs / 3`.
 */
import { MooncakeError, isMooncakeError } from '../errors';
import type { MetadataStore } from './store';
import { rpcMetaKey, segmentKey } from './keys';

export interface PublisherOptions {
  store: MetadataStore;
  name: string;
  rpcMeta: string;
  describe: () => string;
  refreshMs: number;
  /** Asked when another live-looking entry holds our rpc_meta key: true if its owner is gone. */
  isStale: (existing: string) => Promise<boolean>;
  onError: (err: MooncakeError) => void;
  /** Liveness: entries expire about this many ms after this engine stops renewing them. Default: never. */
  ttlMs?: number;
}

export class MetadataPublisher {
  private readonly rpcKey: string;
  private readonly segKey: string;
  private lastDescriptor = '';
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private refreshing = false;
  private renewing = false;
  private readonly setOptions: { ttlMs?: number };
  private rewrites = 0;

  constructor(private readonly o: PublisherOptions) {
    this.rpcKey = rpcMetaKey(o.name);
    this.segKey = segmentKey(o.name);
    this.setOptions = o.ttlMs !== undefined && o.ttlMs > 0 ? { ttlMs: o.ttlMs } : {};
  }

  /** Number of times the entries were found missing and written again. */
  get republished(): number {
    return this.rewrites;
  }

  get keys(): { rpcMeta: string; segment: string } {
    return { rpcMeta: this.rpcKey, segment: this.segKey };
  }

  async start(): Promise<void> {
    await this.claimRpcMeta();
    await this.publish();
    const ttl = this.setOptions.ttlMs ?? 0;
    let refreshMs = this.o.refreshMs;
    if (ttl > 0 && (this.o.store.renewal ?? 'rewrite') === 'rewrite') {
      this.renewTimer = setInterval(() => void this.renew(), Math.max(10, Math.floor(ttl / 3)));
      this.renewTimer.unref();
    } else if (ttl > 0) {
      refreshMs = refreshMs > 0 ? Math.min(refreshMs, ttl) : ttl;
    }
    if (refreshMs > 0) {
      this.timer = setInterval(() => void this.refresh(), refreshMs);
      this.timer.unref();
    }
  }

  /** Writes the current descriptor; calls are serialized so the store ends with the latest one. */
  publish(): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.stopped) return;
      const desc = this.o.describe();
      await this.o.store.set(this.segKey, desc, this.setOptions);
      this.lastDescriptor = desc;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /**
   * Liveness for stores that expire entries unless they are written again: writes both entries (the
   * current descriptor, serialized with `publish`). Errors are reported, not thrown (it runs on a timer).
   */
  async renew(): Promise<void> {
    if (this.stopped || this.renewing) return;
    this.renewing = true;
    const next = this.chain.then(async () => {
      if (this.stopped) return;
      await this.o.store.set(this.rpcKey, this.o.rpcMeta, this.setOptions);
      const desc = this.o.describe();
      await this.o.store.set(this.segKey, desc, this.setOptions);
      this.lastDescriptor = desc;
    });
    this.chain = next.catch(() => undefined);
    try {
      await next;
    } catch (err) {
      if (!this.stopped) this.o.onError(asMetadataError(err, "renewing this engine's metadata"));
    } finally {
      this.renewing = false;
    }
  }

  /** Puts back whatever the store lost. Errors are reported, not thrown (it runs on a timer). */
  async refresh(): Promise<void> {
    if (this.stopped || this.refreshing) return;
    this.refreshing = true;
    try {
      const [rpc, seg] = await Promise.all([this.o.store.get(this.rpcKey), this.o.store.get(this.segKey)]);
      let changed = false;
      if (rpc === undefined) {
        await this.o.store.set(this.rpcKey, this.o.rpcMeta, this.setOptions);
        changed = true;
      }
      if (seg === undefined || seg !== this.lastDescriptor) {
        await this.publish();
        changed = true;
      }
      if (changed) this.rewrites++;
    } catch (err) {
      if (!this.stopped) this.o.onError(asMetadataError(err, 'refreshing this engine\'s metadata'));
    } finally {
      this.refreshing = false;
    }
  }

  /** Deletes our entries (rpc_meta first, as upstream). Best effort: errors are reported, not thrown. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.renewTimer) clearInterval(this.renewTimer);
    await this.chain;
    for (const key of [this.rpcKey, this.segKey]) {
      try {
        await this.o.store.remove(key);
      } catch (err) {
        this.o.onError(asMetadataError(err, `deleting ${key}`));
      }
    }
  }

  private async claimRpcMeta(): Promise<void> {
    try {
      await this.o.store.set(this.rpcKey, this.o.rpcMeta, this.setOptions);
      return;
    } catch (err) {
      if (!isDuplicate(err)) throw err;
    }
    // Upstream's HTTP server refuses to overwrite an rpc_meta key. A crashed process with our name
    // leaves one behind: take it over only when its owner no longer answers.
    const existing = await this.o.store.get(this.rpcKey);
    if (existing === this.o.rpcMeta) return;
    if (existing !== undefined && !(await this.o.isStale(existing))) {
      throw new MooncakeError('METADATA', `the name '${this.o.name}' is already used by a live engine (${existing}); pick another localServerName`, {
        details: { key: this.rpcKey, existing },
      });
    }
    await this.o.store.remove(this.rpcKey);
    await this.o.store.set(this.rpcKey, this.o.rpcMeta, this.setOptions);
  }
}

function isDuplicate(err: unknown): boolean {
  return isMooncakeError(err) && (err.details?.status === 400 || err.details?.status === 409);
}

function asMetadataError(err: unknown, what: string): MooncakeError {
  if (isMooncakeError(err)) return err;
  return new MooncakeError('METADATA', `${what} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
