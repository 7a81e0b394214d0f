/** The stand-ins' record of each response: byte count, the bytes themselves while small, and their SHA-256. */
import { createHash, type Hash } from 'node:crypto';
import type { StandInRequest } from './stand-ins';

const KEEP_LIMIT = 1024 * 1024;

export class Recorder {
  private readonly hash: Hash | undefined;
  private kept: Buffer[] = [];
  private keptBytes = 0;

  constructor(private readonly rec: StandInRequest, private readonly enabled: boolean) {
    this.hash = enabled ? createHash('sha256') : undefined;
  }

  add(chunk: Buffer): void {
    this.rec.bytesSent += chunk.length;
    if (this.hash === undefined) return;
    this.hash.update(chunk);
    if (this.keptBytes + chunk.length <= KEEP_LIMIT) {
      this.kept.push(chunk);
      this.keptBytes += chunk.length;
    } else {
      this.kept = [];
      this.keptBytes = KEEP_LIMIT + 1;
    }
  }

  /** Publishes the bytes kept so far on the record. */
  flush(): void {
    if (!this.enabled) return;
    this.rec.sent = this.keptBytes <= KEEP_LIMIT ? Buffer.concat(this.kept) : undefined;
  }

  finish(): void {
    this.rec.finished = true;
    if (this.hash === undefined) return;
    this.flush();
    this.rec.sha256 = this.hash.digest('hex');
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => (ms > 0 ? setTimeout(r, ms) : setImmediate(r)));
}
