/**
 * The request-token keys of the other tp ranks of a rank's instance (same engine id and dp rank), when no
 * `holdKey` is configured (tokens.ts). Each process makes a random key and every rank publishes it in its
 * registry entry (`token_key`); a rank reads the entries of the other ranks of its instance, so a signal
 * that echoes the params another rank issued (the proxy hands one rank's params to the other side) can be
 * checked with that rank's key.
 *
 * What is known about rank t: it lives in this process (its key is this process's), or its entry was read
 * (its key, and the key before that when it restarted, so the params it issued before still count). At most
 * two keys per rank and tp_size ranks: the cache is bounded by the instance, whatever peers send.
 *
 * Reads ("rounds", every other rank's entry, in parallel): one at start, one every `refreshMs` (a rank that
 * restarted publishes a new key), and on demand (`learn`) when a signal fails every known key while some
 * rank's key is unknown. At most one round runs at a time, and rounds start at least `minGapMs` apart
 * (`retryMs` after a failed read), so a peer cannot make the rank hammer the metadata store.
 */

/** What a rank's entry says about its key: `key` undefined when it publishes none (it has a configured holdKey). */
export interface PublishedKey {
  instance: string;
  key?: Buffer;
}

/** Where the keys come from (the side channel's registry). */
export interface KeyReader {
  /** Whether rank `tpRank` of the instance lives in this process and uses its key. */
  local(tpRank: number): boolean;
  /** Rank `tpRank`'s entry; undefined when it has none. Rejects when the store cannot be read. */
  read(tpRank: number): Promise<PublishedKey | undefined>;
}

export interface InstanceKeysTiming {
  /** How often every other rank's entry is read again. */
  refreshMs: number;
  /** Least time between the starts of two rounds (default 100 ms). */
  minGapMs?: number;
  /** Least time after a round in which a read failed (default 1000 ms). */
  retryMs?: number;
}

interface Known {
  instance: string;
  key?: Buffer;
  previous?: Buffer;
}

export class InstanceKeys {
  private readonly known = new Map<number, Known>();
  private list: Buffer[] | undefined;
  private running = false;
  private wanted = false;
  private lastStart = -Infinity;
  private lastOk = true;
  private pending: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly minGapMs: number;
  private readonly retryMs: number;
  /** Called after every round with the time it started (performance.now()) and whether every read answered. */
  onRound: ((startedAt: number, ok: boolean) => void) | undefined;

  constructor(
    private readonly ownTp: number,
    private readonly tpSize: number,
    private readonly reader: KeyReader,
    private readonly timing: InstanceKeysTiming,
  ) {
    this.minGapMs = timing.minGapMs ?? 100;
    this.retryMs = timing.retryMs ?? 1000;
  }

  /** The other ranks of the instance. */
  private others(): number[] {
    return [...Array(this.tpSize).keys()].filter((t) => t !== this.ownTp);
  }

  /** Keys read from the other ranks' entries (distinct; a local rank's key is the rank's own). */
  keys(): readonly Buffer[] {
    if (!this.list) {
      const list: Buffer[] = [];
      for (const k of this.known.values()) {
        for (const key of [k.key, k.previous]) if (key && !list.some((b) => b.equals(key))) list.push(key);
      }
      this.list = list;
    }
    return this.list;
  }

  /** True when every other rank of the instance lives in this process or its entry was read. */
  complete(): boolean {
    return this.others().every((t) => this.known.has(t) || this.reader.local(t));
  }

  /** Reads every other rank's entry now and every `refreshMs` until close(). */
  start(): void {
    if (this.tpSize < 2 || this.timer) return;
    this.learn();
    this.timer = setInterval(() => this.learn(), this.timing.refreshMs);
    this.timer.unref();
  }

  /** Asks for a round: now, or as soon as the one running ended and the gap since the last start passed. */
  learn(): void {
    this.wanted = true;
    this.kick();
  }

  private kick(): void {
    if (this.closed || this.running || this.pending || !this.wanted) return;
    const wait = this.lastStart + (this.lastOk ? this.minGapMs : this.retryMs) - performance.now();
    if (wait > 0) {
      this.pending = setTimeout(() => {
        this.pending = undefined;
        this.kick();
      }, Math.ceil(wait));
      this.pending.unref();
      return;
    }
    this.wanted = false;
    void this.round();
  }

  private async round(): Promise<void> {
    this.running = true;
    const started = performance.now();
    this.lastStart = started;
    let ok = true;
    await Promise.all(
      this.others()
        .filter((t) => !this.reader.local(t))
        .map(async (t) => {
          try {
            const e = await this.reader.read(t);
            if (e) this.update(t, e);
          } catch {
            ok = false;
          }
        }),
    );
    this.running = false;
    this.lastOk = ok;
    if (this.closed) return;
    this.onRound?.(started, ok);
    this.kick();
  }

  /** A rank that has no entry any more keeps the keys it had: the params it issued may still be answered. */
  private update(tpRank: number, e: PublishedKey): void {
    const k = this.known.get(tpRank);
    if (!k) this.known.set(tpRank, { instance: e.instance, key: e.key });
    else if (k.instance !== e.instance) {
      k.previous = k.key ?? k.previous;
      k.key = e.key;
      k.instance = e.instance;
    } else return;
    this.list = undefined;
  }

  /** Stops reading. Idempotent. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.pending) clearTimeout(this.pending);
    this.timer = this.pending = undefined;
  }
}
