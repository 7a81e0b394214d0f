/** Minimal raw HTTP helpers for metadata-server tests: one fresh connection per request, bounded. */
import * as http from 'node:http';
import * as net from 'node:net';

export interface RawReply {
  status: number;
  body: Buffer;
  text: string;
  contentType: string | undefined;
  headers: http.IncomingHttpHeaders;
}

/**
 * Sends `method target` (target = raw path + query, sent verbatim) to 127.0.0.1:port on a new connection.
 */
export function rawRequest(
  port: number,
  method: string,
  target: string,
  body?: string | Buffer,
  headers: http.OutgoingHttpHeaders = {},
  timeoutMs = 10_000,
): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    const h: http.OutgoingHttpHeaders = { ...headers };
    if (data !== undefined && h['Content-Length'] === undefined && h['Transfer-Encoding'] === undefined) h['Content-Length'] = data.length;
    const req = http.request({ host: '127.0.0.1', port, method, path: target, headers: h, agent: false });
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${target} timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        const b = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, body: b, text: b.toString('utf8'), contentType: res.headers['content-type'], headers: res.headers });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    if (h.Expect === '100-continue' && data !== undefined) {
      req.on('continue', () => req.end(data));
    } else {
      req.end(data);
    }
  });
}

/**
 * Writes raw bytes on a new socket and collects everything until the peer closes or `idleMs` pass
 * without data (bounded by `timeoutMs`). For protocol corners node:http will not produce.
 */
export function rawExchange(
  port: number,
  steps: Array<Buffer | string | { waitFor: string }>,
  options: { timeoutMs?: number; idleMs?: number } = {},
): Promise<string> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const idleMs = options.idleMs ?? 300;
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    let idle: NodeJS.Timeout | undefined;
    let waiting: { text: string; resolve: () => void } | undefined;
    const finish = (): void => {
      clearTimeout(overall);
      if (idle) clearTimeout(idle);
      socket.destroy();
      resolve(received);
    };
    const overall = setTimeout(() => {
      socket.destroy();
      reject(new Error(`raw exchange timed out after ${timeoutMs} ms; received so far:\n${received}`));
    }, timeoutMs);
    socket.on('data', (d: Buffer) => {
      received += d.toString('latin1');
      if (waiting && received.includes(waiting.text)) {
        const w = waiting;
        waiting = undefined;
        w.resolve();
      }
      if (!waiting && stepsDone) {
        if (idle) clearTimeout(idle);
        idle = setTimeout(finish, idleMs);
      }
    });
    socket.on('end', finish);
    socket.on('error', (e) => {
      clearTimeout(overall);
      reject(e);
    });
    let stepsDone = false;
    socket.on('connect', async () => {
      for (const step of steps) {
        if (typeof step === 'object' && !Buffer.isBuffer(step)) {
          if (!received.includes(step.waitFor)) {
            await new Promise<void>((r) => {
              waiting = { text: step.waitFor, resolve: r };
            });
          }
        } else {
          socket.write(step);
        }
      }
      stepsDone = true;
      idle = setTimeout(finish, idleMs);
    });
  });
}
