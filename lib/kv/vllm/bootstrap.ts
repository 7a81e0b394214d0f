/**
 * vLLM's Mooncake bootstrap server, where prefill workers meet decode workers (and the proxy learns each dp
 * rank's engine id):
 *
 * - `POST /register` `{engine_id, dp_rank, tp_rank, pp_rank, addr}` → `{"status": "ok"}`; 400 `{"detail": ...}`
 *   when the dp rank already belongs to another engine id, or the (dp, tp, pp) worker registered another
 *   address (the same address again is fine: a client may retry after a timeout); 422 for a malformed body;
 * - `GET /query` → `{"<dp_rank>": {"engine_id": ..., "worker_addr": {"<tp_rank>": {"<pp_rank>": "tcp://host:port"}}}}`.
 *
 * A prefill's rank 0 serves it (on VLLM_MOONCAKE_BOOTSTRAP_PORT, default 8998); every prefill rank registers
 * its side-channel socket there; a decode queries the address the proxy gives it (`remote_bootstrap_addr`).
 * The same endpoints, so Node and vLLM ranks mix on either side.
 */
import * as http from 'node:http';
import { MooncakeError, describeValue } from '../../errors';

export const DEFAULT_BOOTSTRAP_PORT = 8998;
const MAX_BODY = 64 * 1024;
const MAX_WORKERS = 65_536;

export interface BootstrapRegistration {
  engine_id: string;
  dp_rank: number;
  tp_rank: number;
  pp_rank: number;
  addr: string;
}

/** The /query answer: dp rank → engine id and worker addresses by tp rank and pp rank. */
export type BootstrapTable = Map<number, { engineId: string; workers: Map<number, Map<number, string>> }>;

export class BootstrapServer {
  private readonly table: BootstrapTable = new Map();
  private count = 0;
  private address: { host: string; port: number } | undefined;

  private constructor(private readonly server: http.Server) {}

  /** Starts serving on host:port (0: a free port). CONNECT_FAILED when it cannot listen. */
  static async listen(host: string, port: number): Promise<BootstrapServer> {
    const server = http.createServer();
    const b = new BootstrapServer(server);
    server.on('request', (req, res) => b.handle(req, res));
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new MooncakeError('CONNECT_FAILED', `cannot serve the bootstrap server on ${host}:${port}: ${err.message}`, { cause: err, details: { host, port, code: err.code } })));
      server.listen(port, host, () => resolve());
    });
    const a = server.address() as { port: number };
    b.address = { host, port: a.port };
    return b;
  }

  get port(): number {
    return this.address?.port ?? 0;
  }

  /** 'http://host:port', what decodes are given as remote_bootstrap_addr. */
  get url(): string {
    const h = this.address?.host ?? '';
    return `http://${h.includes(':') ? `[${h}]` : h}:${this.port}`;
  }

  /** The registrations so far (what GET /query answers). */
  query(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [dp, e] of [...this.table].sort((a, b) => a[0] - b[0])) {
      const workers: Record<string, Record<string, string>> = {};
      for (const [tp, pps] of e.workers) workers[String(tp)] = Object.fromEntries([...pps].map(([pp, a]) => [String(pp), a]));
      out[String(dp)] = { engine_id: e.engineId, worker_addr: workers };
    }
    return out;
  }

  /** Records one worker; throws INVALID_ARGUMENT (the 400 answer) for a conflict. */
  register(r: BootstrapRegistration): void {
    let e = this.table.get(r.dp_rank);
    if (e && e.engineId !== r.engine_id) {
      throw new MooncakeError('INVALID_ARGUMENT', `Engine ID mismatch for dp_rank=${r.dp_rank}: expected ${e.engineId}, got ${r.engine_id}`);
    }
    const existing = e?.workers.get(r.tp_rank)?.get(r.pp_rank);
    if (existing !== undefined) {
      if (existing === r.addr) return;
      throw new MooncakeError('INVALID_ARGUMENT', `Worker with dp_rank=${r.dp_rank}, tp_rank=${r.tp_rank}, pp_rank=${r.pp_rank} is already registered at ${existing}, but still want to register at ${r.addr}`);
    }
    if (this.count >= MAX_WORKERS) throw new MooncakeError('INVALID_ARGUMENT', `the bootstrap server holds ${MAX_WORKERS} workers already`);
    if (!e) {
      e = { engineId: r.engine_id, workers: new Map() };
      this.table.set(r.dp_rank, e);
    }
    const pps = e.workers.get(r.tp_rank) ?? new Map<number, string>();
    pps.set(r.pp_rank, r.addr);
    e.workers.set(r.tp_rank, pps);
    this.count++;
  }

  private send(res: http.ServerResponse, status: number, body: unknown): void {
    const data = Buffer.from(JSON.stringify(body));
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': data.length });
    res.end(data);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/query' && req.method === 'GET') {
      req.resume();
      return this.send(res, 200, this.query());
    }
    if (path !== '/register') {
      req.resume();
      return this.send(res, 404, { detail: 'Not Found' });
    }
    if (req.method !== 'POST') {
      req.resume();
      return this.send(res, 405, { detail: 'Method Not Allowed' });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        this.send(res, 413, { detail: 'request body too large' });
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return;
      let r: BootstrapRegistration;
      try {
        r = parseRegistration(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        return this.send(res, 422, { detail: [{ type: 'value_error', msg: (err as Error).message }] });
      }
      try {
        this.register(r);
      } catch (err) {
        return this.send(res, 400, { detail: (err as Error).message });
      }
      this.send(res, 200, { status: 'ok' });
    });
    req.on('error', () => undefined);
  }

  /** Stops serving (connections are cut). Idempotent. */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

function parseRegistration(v: unknown): BootstrapRegistration {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('the body must be a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of ['dp_rank', 'tp_rank', 'pp_rank'] as const) {
    if (!Number.isSafeInteger(o[k]) || (o[k] as number) < 0) throw new Error(`${k} must be a non-negative integer, got ${describeValue(o[k])}`);
  }
  if (typeof o.engine_id !== 'string' || o.engine_id === '' || o.engine_id.length > 256) throw new Error(`engine_id must be a non-empty string, got ${describeValue(o.engine_id)}`);
  if (typeof o.addr !== 'string' || !/^tcp:\/\/\S{1,300}$/.test(o.addr)) throw new Error(`addr must be a tcp://host:port address, got ${describeValue(o.addr)}`);
  return { engine_id: o.engine_id, dp_rank: o.dp_rank as number, tp_rank: o.tp_rank as number, pp_rank: o.pp_rank as number, addr: o.addr };
}

/** 'http://host:port' from 'host:port' or a URL (IPv6 hosts bracketed). */
export function bootstrapUrl(address: string): string {
  const a = address.trim().replace(/\/+$/, '');
  return /^https?:\/\//.test(a) ? a : `http://${a}`;
}

async function fetchJson(url: string, init: RequestInit, timeoutMs: number, signal?: AbortSignal): Promise<{ status: number; body: unknown }> {
  const t = AbortSignal.timeout(timeoutMs);
  const res = await fetch(url, { ...init, signal: signal ? AbortSignal.any([signal, t]) : t });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: keep the text */
  }
  return { status: res.status, body };
}

/**
 * Registers a worker (vLLM's register_worker_with_bootstrap): 3 tries 1 s then 2 s apart while the server is
 * unreachable (its rank 0 may still be starting); an HTTP error fails at once. INVALID_CONFIG (rejected),
 * CONNECT_FAILED or ABORT_ERR.
 */
export async function registerWorker(address: string, r: BootstrapRegistration, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
  const url = `${bootstrapUrl(address)}/register`;
  let backoff = 1000;
  for (let attempt = 1; ; attempt++) {
    let answer: { status: number; body: unknown };
    try {
      answer = await fetchJson(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(r) }, options.timeoutMs ?? 30_000, options.signal);
    } catch (err) {
      if (options.signal?.aborted) throw new MooncakeError('ABORT_ERR', 'registering with the bootstrap server was aborted', { cause: err });
      if (attempt >= 3) throw new MooncakeError('CONNECT_FAILED', `the bootstrap server at ${url} did not answer after 3 tries: ${(err as Error).message}`, { cause: err, details: { url } });
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 10_000);
      continue;
    }
    if (answer.status >= 200 && answer.status < 300) return;
    throw new MooncakeError('INVALID_CONFIG', `the bootstrap server at ${url} rejected ${r.engine_id} dp ${r.dp_rank} tp ${r.tp_rank}: ${answer.status} ${JSON.stringify(answer.body).slice(0, 300)}`, {
      details: { url, status: answer.status },
    });
  }
}

/** GET /query (3 tries 0.1 s apart, as vLLM's decode); CONNECT_FAILED, TIMEOUT or PROTOCOL_ERROR. */
export async function queryBootstrap(address: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<BootstrapTable> {
  const url = `${bootstrapUrl(address)}/query`;
  let last: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      const { status, body } = await fetchJson(url, { method: 'GET' }, options.timeoutMs ?? 30_000, options.signal);
      if (status !== 200) throw new MooncakeError('PROTOCOL_ERROR', `the bootstrap server at ${url} answered ${status}`, { details: { url, status } });
      return parseTable(body, url);
    } catch (err) {
      if (err instanceof MooncakeError || options.signal?.aborted) throw err instanceof MooncakeError ? err : new MooncakeError('ABORT_ERR', 'the bootstrap query was aborted', { cause: err });
      last = err;
      if (attempt < 3) await new Promise((res) => setTimeout(res, 100));
    }
  }
  const timedOut = (last as Error | undefined)?.name === 'TimeoutError';
  throw new MooncakeError(timedOut ? 'TIMEOUT' : 'CONNECT_FAILED', `the bootstrap server at ${url} did not answer: ${(last as Error).message}`, { cause: last, details: { url } });
}

function parseTable(body: unknown, url: string): BootstrapTable {
  const bad = (what: string): MooncakeError => new MooncakeError('PROTOCOL_ERROR', `the bootstrap server at ${url} answered ${what}`);
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw bad('something that is not a JSON object');
  const table: BootstrapTable = new Map();
  const intKey = (k: string): number => {
    if (!/^\d{1,9}$/.test(k)) throw bad(`a rank key ${JSON.stringify(k)}`);
    return Number(k);
  };
  for (const [dp, entry] of Object.entries(body as Record<string, unknown>)) {
    const e = entry as { engine_id?: unknown; worker_addr?: unknown } | null;
    if (!e || typeof e.engine_id !== 'string' || e.worker_addr === null || typeof e.worker_addr !== 'object') throw bad(`dp rank ${dp} without engine_id and worker_addr`);
    const workers = new Map<number, Map<number, string>>();
    for (const [tp, pps] of Object.entries(e.worker_addr as Record<string, unknown>)) {
      if (pps === null || typeof pps !== 'object') throw bad(`tp rank ${tp} without pp ranks`);
      const m = new Map<number, string>();
      for (const [pp, addr] of Object.entries(pps as Record<string, unknown>)) {
        if (typeof addr !== 'string') throw bad(`a worker address that is not a string`);
        m.set(intKey(pp), addr);
      }
      workers.set(intKey(tp), m);
    }
    table.set(intKey(dp), { engineId: e.engine_id, workers });
  }
  return table;
}
