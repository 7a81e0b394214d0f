/**
 * The metadata server's entries: TTLs, the entry and byte budgets, one change at a time per key, and
 * persistence. A change is stored durably first (lib/metadata/persistence.ts, with `dataDir`) and
 * applied after: a refused or failed write changes nothing. Room for a change is held while it is
 * written, so concurrent PUTs cannot overshoot a budget together.
 */
import { MooncakeError } from '../errors';
import { MetadataLog, type LogLogger, type LoggedEntry } from './persistence';

export interface Entry extends LoggedEntry {
  /** Monotonic deadline, or Infinity. */
  expiresAt: number;
}

export interface EntryStoreOptions {
  ttlMs: number;
  maxEntries: number;
  maxStoreBytes: number;
  now: () => number;
  log: LogLogger;
}

const keyBytes = (key: string): number => Buffer.byteLength(key, 'utf8');

export class EntryStore {
  private readonly map = new Map<string, Entry>();
  /** Bytes of keys and values in `map`. */
  private bytes = 0;
  private reservedEntries = 0;
  private reservedBytes = 0;
  private readonly queues = new Map<string, Promise<void>>();
  private persistence: MetadataLog | undefined;

  constructor(private readonly o: EntryStoreOptions) {}

  /** Entries held, expired ones not yet swept included. */
  get size(): number {
    return this.map.size;
  }

  get storeBytes(): number {
    return this.bytes;
  }

  get log(): MetadataLog | undefined {
    return this.persistence;
  }

  /** Loads `dataDir` and persists every later change there. */
  async open(dataDir: string, logSlackBytes: number): Promise<void> {
    const log = new MetadataLog(dataDir, this.o.log, () => this.entries(), logSlackBytes);
    let loaded: Awaited<ReturnType<MetadataLog['open']>>;
    try {
      loaded = await log.open();
    } catch (cause) {
      throw new MooncakeError('INVALID_CONFIG', `cannot use the metadata data directory ${dataDir}: ${(cause as Error).message}`, { cause, details: { dataDir } });
    }
    this.persistence = log;
    const wallNow = Date.now();
    const monoNow = this.o.now();
    let expired = 0;
    for (const [key, e] of loaded.entries) {
      let expiresAt = Infinity;
      if (this.o.ttlMs > 0) {
        const age = Math.max(0, wallNow - e.updatedAt); // a clock that went back counts as fresh
        if (age >= this.o.ttlMs) {
          expired++;
          continue;
        }
        expiresAt = monoNow + this.o.ttlMs - age;
      }
      this.map.set(key, { value: e.value, updatedAt: e.updatedAt, expiresAt });
      this.bytes += keyBytes(key) + e.value.length;
    }
    if (loaded.skipped > 0) this.o.log.warn(`metadata-server: skipped ${loaded.skipped} malformed entries in ${log.file}`);
    this.o.log.info(`metadata-server: loaded ${this.map.size} entries from ${log.file}${expired > 0 ? ` (${expired} expired)` : ''}`);
  }

  close(): Promise<void> {
    return this.persistence?.close() ?? Promise.resolve();
  }

  /** The entry, unless missing or expired. */
  live(key: string): Entry | undefined {
    const entry = this.map.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.o.now()) {
      this.drop(key);
      return undefined;
    }
    return entry;
  }

  *entries(): Generator<[string, Entry]> {
    const now = this.o.now();
    for (const kv of this.map) if (kv[1].expiresAt > now) yield kv;
  }

  count(): number {
    if (this.o.ttlMs > 0) this.sweep();
    return this.map.size;
  }

  /** Drops expired entries (they also expire on load: their updatedAt is persisted, nothing is logged). */
  sweep(): void {
    const now = this.o.now();
    for (const [key, entry] of this.map) if (entry.expiresAt <= now) this.drop(key);
  }

  /** Why storing `size` bytes under `key` would go past a limit (undefined: it fits). */
  whyFull(key: string, size: number): string | undefined {
    const existing = this.live(key);
    if (!existing && this.count() + this.reservedEntries >= this.o.maxEntries) {
      return `metadata store is full: ${this.o.maxEntries} entries (maxEntries); delete stale keys or raise the limit`;
    }
    const after = this.bytes + this.reservedBytes + keyBytes(key) + size - (existing ? keyBytes(key) + existing.value.length : 0);
    if (after > this.o.maxStoreBytes) {
      return `metadata store is full: ${after} bytes would exceed ${this.o.maxStoreBytes} (maxStoreBytes); delete stale keys or raise the limit`;
    }
    return undefined;
  }

  /** Runs fn after every earlier change to `key` has finished. */
  oneAtATime(key: string, fn: () => Promise<void>): Promise<void> {
    const run = (this.queues.get(key) ?? Promise.resolve()).then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(key, tail);
    void tail.then(() => {
      if (this.queues.get(key) === tail) this.queues.delete(key);
    });
    return run;
  }

  /** Stores `value` (call within oneAtATime, after whyFull). Throws PersistError, changing nothing. */
  async put(key: string, value: Buffer): Promise<void> {
    const existing = this.live(key);
    const grow = Math.max(0, value.length - (existing ? existing.value.length : -keyBytes(key)));
    const added = existing ? 0 : 1;
    this.reservedEntries += added;
    this.reservedBytes += grow;
    try {
      const updatedAt = Date.now();
      await this.persistence?.append([{ op: 'put', key, value, updatedAt }]);
      this.drop(key); // re-insert so the map keeps PUT order
      this.map.set(key, { value, updatedAt, expiresAt: this.expiry() });
      this.bytes += keyBytes(key) + value.length;
    } finally {
      this.reservedEntries -= added;
      this.reservedBytes -= grow;
    }
  }

  /** Refreshes the entry's TTL (an identical rpc_meta re-PUT). Throws PersistError, changing nothing. */
  async touch(key: string, entry: Entry): Promise<void> {
    const updatedAt = Date.now();
    await this.persistence?.append([{ op: 'touch', key, updatedAt }]);
    entry.expiresAt = this.expiry();
    entry.updatedAt = updatedAt;
  }

  /** Deletes the entry. Throws PersistError, changing nothing. */
  async remove(key: string): Promise<void> {
    await this.persistence?.append([{ op: 'del', key }]);
    this.drop(key);
  }

  private expiry(): number {
    return this.o.ttlMs > 0 ? this.o.now() + this.o.ttlMs : Infinity;
  }

  private drop(key: string): void {
    const entry = this.map.get(key);
    if (!entry) return;
    this.map.delete(key);
    this.bytes -= keyBytes(key) + entry.value.length;
  }
}
