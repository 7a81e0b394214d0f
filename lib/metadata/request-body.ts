/** Request bodies of the metadata server: bounded per request and across requests. */
import type * as http from 'node:http';

/**
 * Reads a request body up to `limit` bytes, holding its bytes in `budget` (shared by every request)
 * while it arrives. 'too-large' when the body is larger than `limit`, 'busy' when the bodies arriving
 * at once would hold more than `maxBuffered`; the rest is then discarded as it arrives, and the socket
 * is destroyed after 64 MiB of excess or 10 s.
 */
export function readBody(req: http.IncomingMessage, limit: number, budget: { bytes: number }, maxBuffered: number): Promise<Buffer | 'too-large' | 'busy'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let held = 0;
    let over = false;
    const release = (): void => {
      budget.bytes -= held;
      held = 0;
    };
    const refuse = (why: 'too-large' | 'busy'): void => {
      over = true;
      chunks.length = 0;
      release();
      setTimeout(() => {
        if (!req.complete) req.socket.destroy();
      }, 10_000).unref();
      resolve(why);
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (over) {
        if (size > limit + 64 * 1024 * 1024) req.socket.destroy();
        return;
      }
      if (size > limit) return refuse('too-large');
      if (budget.bytes + chunk.length > maxBuffered) return refuse('busy');
      budget.bytes += chunk.length;
      held += chunk.length;
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (over) return;
      release();
      resolve(Buffer.concat(chunks));
    });
    const gone = (why: string): void => {
      release();
      reject(new ClientGone(why));
    };
    req.on('error', (e) => gone(e.message));
    req.on('aborted', () => gone('request aborted by the client'));
  });
}

/** The client went away while we were reading its request; nothing to answer, nothing to log. */
export class ClientGone extends Error {}
