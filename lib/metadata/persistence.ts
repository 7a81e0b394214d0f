/**
 * The metadata server's persistence: an append-only log in `<dataDir>/metadata.json`, JSON lines.
 *
 *   {"format":"mooncake-node-metadata-log","version":2}                          header
 *   {"op":"put","key":"k","value":"…","encoding":"utf8"|"base64","updatedAt":ms}    a PUT
 *   {"op":"touch","key":"k","updatedAt":ms}                                         a TTL refresh
 *   {"op":"del","key":"k"}                                                          a DELETE
 *
 * A change costs one appended record and one fdatasync, whatever the size of the store (changes that
 * arrive together share the write and the sync). A value is written as UTF-8 text when that is
 * compact, else as base64, so no value grows more than 4/3 on disk. When the log holds much more than
 * the live entries (overwrites, deletes), it is compacted: the live entries are written to a temp
 * file while appends go on, the records appended meanwhile follow them, and the temp file is renamed
 * over the log. Nothing is answered before its record is on disk; a crash can only tear the last
 * record, which the next load cuts off. A failed write is cut off too (or, if even that fails, the
 * next write rewrites the whole log), so one failure never leaves the log unusable. The log file
 * vanishing (the directory removed) is noticed at the next write, which then rewrites everything.
 *
 * The whole-store JSON file of earlier versions (`{"format":"mooncake-node-metadata","version":1,…}`)
 * is read once and rewritten as a log. The format and its reader are in ./log-format.ts.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DATA_FILE, EmptyLog, HEADER, READ_CHUNK, Unreadable, encodeRecord, readLog, type LogRecord, type LoggedEntry } from './log-format';

export { DATA_FILE, encodeRecord, type LogRecord, type LoggedEntry } from './log-format';

/** Compaction once the log exceeds twice the live records plus this (by default). */
export const DEFAULT_LOG_SLACK_BYTES = 64 * 1024 * 1024;

export interface LogLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface LoadResult {
  entries: Map<string, LoggedEntry>;
  /** Records (or legacy entries) that could not be used. */
  skipped: number;
}

/** Raised when the store could not be made durable; `code` is the errno name (ENOSPC, EIO, …). */
export class PersistError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
  /** The disk (or quota) is full: answer 507 rather than 500. */
  get noSpace(): boolean {
    return this.code === 'ENOSPC' || this.code === 'EDQUOT';
  }
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

interface Waiting {
  records: Buffer[];
  bytes: number;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class MetadataLog {
  readonly file: string;
  private readonly dir: string;
  private handle: fs.promises.FileHandle | undefined;
  /** Bytes of the log known to be whole records (the header included). */
  private size = 0;
  /** Bytes the live entries would take as records (what a compaction writes). */
  private liveBytes = 0;
  /** Record sizes of the live keys, to keep liveBytes current. */
  private readonly recordBytes = new Map<string, number>();
  private next: Waiting | undefined;
  private flushing: Promise<void> | undefined;
  /** The log must be rewritten from the live entries before anything else is appended. */
  private rewrite = false;
  /** Set while a background compaction runs: the records appended meanwhile, to copy over. */
  private compacting: { since: Buffer[]; superseded: boolean } | undefined;
  private compaction: Promise<void> | undefined;
  /** Serializes writes to the log file with the end of a compaction (see locked()). */
  private lock: Promise<void> = Promise.resolve();
  private compactFailedAt = 0;
  private tmpCounter = 0;
  private installed = 0;
  private closed = false;

  constructor(
    dataDir: string,
    private readonly log: LogLogger,
    /** The live entries now (for compaction and rewrites). */
    private readonly live: () => Iterable<[string, LoggedEntry]>,
    /** Compact once the log exceeds twice the live records plus this many bytes. */
    private readonly slack = DEFAULT_LOG_SLACK_BYTES,
  ) {
    this.dir = dataDir;
    this.file = path.join(dataDir, DATA_FILE);
  }

  /** Bytes of the log on disk (whole records). */
  get bytes(): number {
    return this.size;
  }

  /** Times the log was rewritten from the live entries (compactions, and rewrites after a loss). */
  get compactions(): number {
    return this.installed;
  }

  /**
   * Reads the log (or a legacy file), cuts off a torn last record, moves an unreadable file aside,
   * and opens the log for appending. Throws INVALID_CONFIG-worthy errors as plain Errors with `code`.
   */
  async open(): Promise<LoadResult> {
    await fs.promises.mkdir(this.dir, { recursive: true });
    // Temp files left by a crash mid-compaction are incomplete by definition.
    for (const name of await fs.promises.readdir(this.dir)) {
      if (name.startsWith(`${DATA_FILE}.tmp-`)) await fs.promises.rm(path.join(this.dir, name), { force: true });
    }
    const entries = new Map<string, LoggedEntry>();
    let skipped = 0;
    let legacy = false;
    let cut: number | undefined;
    try {
      const r = await readLog(this.file, entries);
      skipped = r.skipped;
      legacy = r.legacy;
      cut = r.cut;
    } catch (e) {
      if (errno(e) === 'ENOENT' || e instanceof EmptyLog) {
        entries.clear();
        this.rewrite = true;
      } else if (e instanceof Unreadable) {
        entries.clear();
        const aside = `${this.file}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
        await fs.promises.rename(this.file, aside).catch(() => undefined);
        this.log.error(
          `metadata-server: ${this.file} is unreadable (${e.message}); moved it to ${aside} and started with an empty store. ` +
            'Peers re-publish their keys when they restart.',
        );
        this.rewrite = true;
      } else {
        throw e;
      }
    }
    for (const [key, e] of entries) this.track(key, e);
    if (legacy) this.rewrite = true;
    this.handle = await fs.promises.open(this.file, 'a+', 0o600);
    if (cut !== undefined) {
      await this.handle.truncate(cut);
      await this.handle.sync();
      this.log.warn(`metadata-server: cut off a torn record at the end of ${this.file} (a write the previous run did not finish)`);
    }
    if (!this.rewrite) this.size = (await this.handle.stat()).size;
    // A new, legacy or oversized log is rewritten now from what was loaded.
    if (this.rewrite || this.size > 2 * this.liveBytes + this.slack) {
      await this.rewriteAll(entries);
      this.rewrite = false;
    }
    return { entries, skipped };
  }

  /** Appends the records (one write and one sync shared with other concurrent appends). */
  append(records: LogRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(new PersistError('the metadata log is closed', undefined));
    const bufs = records.map(encodeRecord);
    if (!this.next) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const done = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.next = { records: [], bytes: 0, done, resolve, reject };
    }
    const w = this.next;
    for (const b of bufs) {
      w.records.push(b);
      w.bytes += b.length;
    }
    records.forEach((r, i) => this.noteRecord(r, bufs[i]!.length));
    if (!this.flushing) this.flushing = this.flushLoop();
    return w.done;
  }

  /** Waits for pending appends and a running compaction, then closes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    while (this.flushing || this.compaction) {
      await this.flushing?.catch(() => undefined);
      await this.compaction;
    }
    this.closed = true;
    await this.handle?.close().catch(() => undefined);
    this.handle = undefined;
  }

  // -------------------------------------------------------------------------------------------

  /** liveBytes follows the records as they are accepted (an estimate until they are on disk). */
  private noteRecord(r: LogRecord, bytes: number): void {
    const old = this.recordBytes.get(r.key);
    if (r.op === 'put') {
      this.liveBytes += bytes - (old ?? 0);
      this.recordBytes.set(r.key, bytes);
    } else if (r.op === 'del' && old !== undefined) {
      this.liveBytes -= old;
      this.recordBytes.delete(r.key);
    }
  }

  private track(key: string, e: LoggedEntry): void {
    this.noteRecord({ op: 'put', key, value: e.value, updatedAt: e.updatedAt }, encodeRecord({ op: 'put', key, value: e.value, updatedAt: e.updatedAt }).length);
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.next) {
        const w = this.next;
        this.next = undefined;
        try {
          await this.locked(() => this.write(w));
          w.resolve();
        } catch (e) {
          w.reject(e instanceof PersistError ? e : new PersistError((e as Error).message, errno(e)));
        }
        if (!this.compaction && this.size > 2 * this.liveBytes + this.slack && this.size - this.compactFailedAt > this.slack) {
          this.compaction = this.compactInBackground().finally(() => {
            this.compaction = undefined;
          });
        }
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Runs fn once every earlier locked() call has finished. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn);
    this.lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async write(w: Waiting): Promise<void> {
    const data = w.records.length === 1 ? w.records[0]! : Buffer.concat(w.records, w.bytes);
    if (!this.rewrite && this.handle) {
      // The directory (or the file) may have been removed under us: writes would go nowhere.
      const st = await this.handle.stat().catch(() => undefined);
      if (!st || st.nlink === 0) {
        this.log.error(`metadata-server: ${this.file} disappeared; the whole store will be written again`);
        this.rewrite = true;
      }
    }
    if (this.rewrite) {
      // The live entries first (a full, clean log), then these records. A background compaction in
      // progress is superseded: its snapshot would lack these records.
      if (this.compacting) this.compacting.superseded = true;
      await this.rewriteAll(this.live(), data);
      this.rewrite = false;
      return;
    }
    const h = this.handle!;
    try {
      await writeAll(h, data);
      await h.datasync();
    } catch (e) {
      // Cut off whatever part of the batch landed, so the log stays whole records; if even that fails,
      // the next write rewrites the log from the live entries.
      try {
        await h.truncate(this.size);
      } catch {
        this.rewrite = true;
      }
      throw new PersistError(`could not write ${this.file}: ${(e as Error).message}`, errno(e));
    }
    this.size += data.length;
    this.compacting?.since.push(data);
  }

  /**
   * Compaction while appends go on: the live entries go to a temp file without the lock; then, under
   * the lock (no append in progress), the records appended meanwhile follow and the file is renamed
   * over the log.
   */
  private async compactInBackground(): Promise<void> {
    const state = { since: [] as Buffer[], superseded: false };
    this.compacting = state;
    let tmp: Temp | undefined;
    try {
      tmp = await this.writeTemp(this.live());
      await this.locked(async () => {
        // A rewrite happened or is due: it writes everything itself, this snapshot is stale.
        if (this.rewrite || state.superseded) throw new Superseded();
        for (const b of state.since) await writeAll(tmp!.h, b);
        await this.install(tmp!);
      });
    } catch (e) {
      if (tmp) await tmp.discard();
      if (!(e instanceof Superseded)) {
        this.compactFailedAt = this.size;
        this.log.error(`metadata-server: compacting ${this.file} failed (the log stays as it is and will be compacted later): ${(e as Error).message}`);
      }
    } finally {
      this.compacting = undefined;
    }
  }

  /** Replaces the log with `entries` (then `tail`). Caller holds the lock (or nothing else runs yet). */
  private async rewriteAll(entries: Iterable<[string, LoggedEntry]>, tail?: Buffer): Promise<void> {
    const tmp = await this.writeTemp(entries, tail);
    try {
      await this.install(tmp);
    } catch (e) {
      await tmp.discard();
      throw e;
    }
  }

  /** Writes the header and a put per entry (then `tail`) to a new temp file. */
  private async writeTemp(entries: Iterable<[string, LoggedEntry]>, tail?: Buffer): Promise<Temp> {
    const name = `${this.file}.tmp-${process.pid}-${++this.tmpCounter}-${randomBytes(4).toString('hex')}`;
    let h: fs.promises.FileHandle | undefined;
    const tmp: Temp = {
      name,
      get h() {
        return h!;
      },
      discard: async () => {
        await h?.close().catch(() => undefined);
        h = undefined;
        await fs.promises.rm(name, { force: true }).catch(() => undefined);
      },
    };
    try {
      h = await fs.promises.open(name, 'w', 0o600);
      const chunk: Buffer[] = [HEADER];
      let bytes = HEADER.length;
      for (const [key, e] of entries) {
        const b = encodeRecord({ op: 'put', key, value: e.value, updatedAt: e.updatedAt });
        chunk.push(b);
        bytes += b.length;
        if (bytes >= READ_CHUNK) {
          await writeAll(h, Buffer.concat(chunk, bytes));
          chunk.length = 0;
          bytes = 0;
        }
      }
      if (tail) {
        chunk.push(tail);
        bytes += tail.length;
      }
      if (bytes > 0) await writeAll(h, Buffer.concat(chunk, bytes));
      return tmp;
    } catch (e) {
      await tmp.discard();
      throw new PersistError(`could not write ${this.file}: ${(e as Error).message}`, errno(e));
    }
  }

  /** Syncs the temp file, renames it over the log and appends to it from now on. */
  private async install(tmp: Temp): Promise<void> {
    let size: number;
    try {
      await tmp.h.sync();
      size = (await tmp.h.stat()).size;
      await tmp.h.close();
      await fs.promises.rename(tmp.name, this.file);
    } catch (e) {
      throw new PersistError(`could not write ${this.file}: ${(e as Error).message}`, errno(e));
    }
    await fsyncDir(this.dir);
    const old = this.handle;
    this.handle = await fs.promises.open(this.file, 'a', 0o600);
    await old?.close().catch(() => undefined);
    this.size = size;
    this.installed++;
  }
}

class Superseded extends Error {}

interface Temp {
  name: string;
  readonly h: fs.promises.FileHandle;
  discard(): Promise<void>;
}
async function writeAll(h: fs.promises.FileHandle, data: Buffer): Promise<void> {
  for (let off = 0; off < data.length; ) {
    const { bytesWritten } = await h.write(data, off, data.length - off);
    off += bytesWritten;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  try {
    const h = await fs.promises.open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  } catch {
    // Not every filesystem lets a directory be fsync'ed; the rename is still atomic.
  }
}
