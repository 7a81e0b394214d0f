/**
 * Keeps this engine's entries in the metadata store the way upstream peers expect them:
 * `mooncake/rpc_meta/<name>` = {ip_or_host_name, rpc_port} and `mooncake/ram/<name>` = the segment
 * descriptor, rewritten whole after every (un)registration, checked periodically and republished when
 * the store lost them (e.g. a restarted HTTP metadata server), and deleted on close (rpc_meta first).
 */
import { MooncakeError, isMooncakeError } from './errors';
import type { MetadataStore } from './metadata/store';
import { rpcMetaKey, segmentKey } from './metadata/keys';

export interface PublisherOptions {
  store: MetadataStore;
  name: string;
  rpcMeta: string;
  describe: () => string;
  refreshMs: number;
  /** Asked when another live-looking entry holds our rpc_meta key: true if its owner is gone. */
  isStale: (existing: string) => Promise<boolean>;
  onError: (err: MooncakeError) => void;
}

export class MetadataPublisher {
  private readonly rpcKey: string;
  private readonly segKey: string;
  private lastDescriptor = '';
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private refreshing = false;
  /** Number of times the entries were found missing and written again. */
  republished = 0;

  constructor(private readonly o: PublisherOptions) {
    this.rpcKey = rpcMetaKey(o.name);
    this.segKey = segmentKey(o.name);
  }

  get keys(): { rpcMeta: string; segment: string } {
    return { rpcMeta: this.rpcKey, segment: this.segKey };
  }

  async start(): Promise<void> {
    await this.claimRpcMeta();
    await this.publish();
    if (this.o.refreshMs > 0) {
      this.timer = setInterval(() => void this.refresh(), this.o.refreshMs);
      this.timer.unref();
    }
  }

  /** Writes the current descriptor; calls are serialized so the store ends with the latest one. */
  publish(): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.stopped) return;
      const desc = this.o.describe();
      await this.o.store.set(this.segKey, desc);
      this.lastDescriptor = desc;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Puts back whatever the store lost. Errors are reported, not thrown (it runs on a timer). */
  async refresh(): Promise<void> {
    if (this.stopped || this.refreshing) return;
    this.refreshing = true;
    try {
      const [rpc, seg] = await Promise.all([this.o.store.get(this.rpcKey), this.o.store.get(this.segKey)]);
      let changed = false;
      if (rpc === undefined) {
        await this.o.store.set(this.rpcKey, this.o.rpcMeta);
        changed = true;
      }
      if (seg === undefined || seg !== this.lastDescriptor) {
        await this.publish();
        changed = true;
      }
      if (changed) this.republished++;
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
      await this.o.store.set(this.rpcKey, this.o.rpcMeta);
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
    await this.o.store.set(this.rpcKey, this.o.rpcMeta);
  }
}

function isDuplicate(err: unknown): boolean {
  return isMooncakeError(err) && (err.details?.status === 400 || err.details?.status === 409);
}

function asMetadataError(err: unknown, what: string): MooncakeError {
  if (isMooncakeError(err)) return err;
  return new MooncakeError('METADATA', `${what} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
