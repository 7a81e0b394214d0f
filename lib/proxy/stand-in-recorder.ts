/** The stand-ins' record of each response: byte count, the bytes themselves while small, and their SHA-256. */
import { createHash, type Hash } from 'node:crypto';
import type * as http from 'node:http';
import type { JsonObject } from './rewrite';

const KEEP_LIMIT = 1024 * 1024;

/** One completion request a stand-in received, and what it answered. */
export interface StandInRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: http.IncomingHttpHeaders;
  /** The exact request body bytes. */
  readonly raw: Buffer;
  /** The parsed body (undefined if it was not a JSON object). */
  readonly body: JsonObject | undefined;
  readonly requestId: string | undefined;
  status: number | undefined;
  /** Response body bytes written so far. */
  bytesSent: number;
  /** The response body bytes, kept while they fit in 1 MiB (see sha256 for bigger ones). */
  sent: Buffer | undefined;
  /** SHA-256 (hex) of the whole response body, set when the response finished. */
  sha256: string | undefined;
  /** True once the whole response was written. */
  finished: boolean;
  /** True when the connection closed before the response was complete (the proxy aborted it). */
  clientClosed: boolean;
  /** True while the stand-in waits for the socket to drain (the reader applies backpressure). */
  blockedOnDrain: boolean;
}

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
