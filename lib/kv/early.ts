/**
 * What a rank keeps of the messages it cannot act on yet: signals for requests not held / expected yet,
 * and signals whose request token cannot be checked yet. Bounded by count and bytes, and they expire.
 */
export interface EarlyLimits {
  maxCount: number;
  maxBytes: number;
  ttlMs: number;
}

/**
 * Messages for requests this rank does not know yet (a peer may be faster than this rank's hold() or
 * expect()), kept until the request shows up or for `ttlMs` after the first one arrived. Bounded by
 * messages (`maxCount`) and by bytes (`maxBytes`, as `sizeOf` counts them): when either is reached, new
 * messages are refused (`keep` returns false) and what is kept stays. Expired messages are dropped first.
 *
 * Messages whose request token cannot be checked yet (`keepUnverified`: it may have been made under the key
 * of a rank of the instance that was not read yet) wait here too, under the same bounds and expiry.
 */
export class EarlyMessages<M> {
  private readonly byRequest = new Map<string, { messages: M[]; bytes: number; expires: number }>();
  private readonly unverified = new Map<number, { message: M; bytes: number; expires: number; arrived: number }>();
  private nextUnverified = 0;
  private count = 0;
  private total = 0;
  private expiredCount = 0;

  constructor(private readonly limits: EarlyLimits, private readonly sizeOf: (m: M) => number) {}

  /** Messages and bytes kept now (unverified ones included), and messages dropped because their time ran out. */
  stats(): { held: number; bytes: number; expired: number } {
    this.expire(performance.now());
    return { held: this.count, bytes: this.total, expired: this.expiredCount };
  }

  /** Messages waiting for their token to be checked. */
  get unverifiedCount(): number {
    return this.unverified.size;
  }

  /** Both maps are kept in arrival order, so the expired entries are at the front. */
  private expire(now: number): void {
    for (const [k, e] of this.byRequest) {
      if (e.expires > now) break;
      this.drop(k, e);
      this.expiredCount += e.messages.length;
    }
    for (const [k, e] of this.unverified) {
      if (e.expires > now) break;
      this.unverified.delete(k);
      this.count--;
      this.total -= e.bytes;
      this.expiredCount++;
    }
  }

  private drop(requestId: string, e: { messages: M[]; bytes: number }): void {
    this.byRequest.delete(requestId);
    this.count -= e.messages.length;
    this.total -= e.bytes;
  }

  private fits(size: number): boolean {
    return this.count + 1 <= this.limits.maxCount && this.total + size <= this.limits.maxBytes;
  }

  /** Keeps `m`, whose token cannot be checked yet; false when it does not fit (nothing kept). */
  keepUnverified(m: M): boolean {
    const now = performance.now();
    this.expire(now);
    const size = this.sizeOf(m);
    if (!this.fits(size)) return false;
    this.unverified.set(this.nextUnverified++, { message: m, bytes: size, expires: now + this.limits.ttlMs, arrived: now });
    this.count++;
    this.total += size;
    return true;
  }

  /** Takes (in arrival order) the unverified messages that `settled` decides, given when each arrived. */
  takeUnverified(settled: (m: M, arrived: number) => boolean): M[] {
    this.expire(performance.now());
    const out: M[] = [];
    for (const [k, e] of this.unverified) {
      if (!settled(e.message, e.arrived)) continue;
      this.unverified.delete(k);
      this.count--;
      this.total -= e.bytes;
      out.push(e.message);
    }
    return out;
  }

  /** Keeps `m` for `requestId`; false when it does not fit (nothing kept). */
  keep(requestId: string, m: M): boolean {
    const now = performance.now();
    this.expire(now);
    const size = this.sizeOf(m);
    if (!this.fits(size)) return false;
    let e = this.byRequest.get(requestId);
    if (!e) {
      e = { messages: [], bytes: 0, expires: now + this.limits.ttlMs };
      this.byRequest.set(requestId, e);
    }
    e.messages.push(m);
    e.bytes += size;
    this.count++;
    this.total += size;
    return true;
  }

  /** The unexpired messages kept for a request (forgotten here), in arrival order. */
  take(requestId: string): M[] {
    this.expire(performance.now());
    const e = this.byRequest.get(requestId);
    if (!e) return [];
    this.drop(requestId, e);
    return e.messages;
  }
}
