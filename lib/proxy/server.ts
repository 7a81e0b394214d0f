/**
 * createProxy(): the OpenAI-compatible prefill/decode router, as vllm-ascend's load-balancing proxy behaves.
 *
 *   client ── POST /v1/(chat/)completions ──▶ proxy ── max_tokens=1, do_remote_decode ──▶ prefill
 *                                              proxy ◀── JSON with kv_transfer_params ─── prefill
 *                                              proxy ── client body + kv_transfer_params ─▶ decode
 *   client ◀──────── decode's answer (SSE or JSON; cached_tokens filled in) ─────────────── decode
 *
 * That is the 'pull' mode; the request flows live in modes.ts, one request's course in completion.ts. This file
 * is the server: lifecycle, routing, the instance pools and the other endpoints.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import { MooncakeError } from '../errors';
import { runCompletion, type CompletionContext, type CompletionDeps, type CompletionMode } from './completion';
import { readBody, relay, sendUpstream, withRetries, type Routed } from './forward';
import { HealthChecker, Instance, InstancePool, type InstanceSnapshot } from './instances';
import { ProxyMetrics, type EndpointLabel, type ProxyCounters } from './metrics';
import { PROMETHEUS_CONTENT_TYPE, renderText } from '../metrics/text';
import type { MetricFamily } from '../metrics/types';
import { ROLES, bootstrapOf, normalizeInstanceUrl, resolveProxyOptions, type ProxyOptions, type ResolvedProxyOptions, type Role } from './options';
import { LayerwiseMode, PullMode } from './modes';
import { PushMode } from './push-mode';
import { createPolicy } from './policies';
import { clientResponseHeaders, estimatePromptTokens, isJsonObject, requestedOutputTokens, upstreamRequestHeaders, type JsonObject } from './rewrite';

export interface ProxyAddress {
  host: string;
  port: number;
  /** 'http://host:port', ready to put in a client. */
  url: string;
}

export interface ProxyStats extends ProxyCounters {
  listening: boolean;
  instances: { prefill: InstanceSnapshot[]; decode: InstanceSnapshot[] };
}

export interface ProxyCloseOptions {
  /** How long in-flight requests may run before they are cut (default: the `shutdownGraceMs` option). */
  graceMs?: number;
}

export interface PdProxy {
  /** Starts listening (and health checking). Resolves with the bound address; port 0 picks a free port. */
  listen(): Promise<ProxyAddress>;
  /** The bound address, or undefined before listen() and after close(). */
  address(): ProxyAddress | undefined;
  /**
   * Stops accepting requests, lets in-flight ones finish for the grace period, then cuts the rest (their
   * upstream requests are aborted) and closes the keep-alive agent. Idempotent.
   */
  close(options?: ProxyCloseOptions): Promise<void>;
  /** Adds an instance ('host:port' or 'http://host:port'). Throws INVALID_CONFIG for a bad or duplicate address. */
  addInstance(role: Role, url: string): InstanceSnapshot;
  /** Removes an instance from routing (requests already on it finish). False when it was not in the pool. */
  removeInstance(role: Role, url: string): boolean;
  /** The instances of one role, or of both. */
  instances(role?: Role): InstanceSnapshot[];
  stats(): ProxyStats;
  /** The proxy's metrics (what `/metrics` serves), for a `MetricsRegistry` (docs/metrics.md). */
  collectMetrics(): MetricFamily[];
  /** Runs one health-probe round now (also runs every `healthCheck.intervalMs`). */
  checkHealth(): Promise<void>;
}

/** Creates a proxy; nothing listens until `listen()`. Throws INVALID_CONFIG for bad options. */
export function createProxy(options: ProxyOptions): PdProxy {
  return new ProxyServer(resolveProxyOptions(options));
}

const COMPLETION_PATHS = new Set(['/v1/completions', '/v1/chat/completions']);
const KNOWN_ENDPOINTS = new Set<string>(['/v1/completions', '/v1/chat/completions', '/v1/models', '/healthcheck', '/metrics', '/admin/instances', '/reset_prefix_cache', '/v1/metaserver']);

/** How long one instance may take to answer a fanned-out /reset_prefix_cache. */
const RESET_TIMEOUT_MS = 60_000;

function errorBody(status: number, message: string, type: string): Buffer {
  return Buffer.from(JSON.stringify({ error: { message, type, param: null, code: status } }));
}

function statusType(status: number): string {
  if (status === 400 || status === 413) return 'invalid_request_error';
  if (status === 401) return 'authentication_error';
  if (status === 404) return 'not_found_error';
  if (status === 405) return 'method_not_allowed';
  if (status === 409) return 'conflict_error';
  if (status === 503) return 'service_unavailable';
  if (status === 504) return 'timeout_error';
  return 'upstream_error';
}

function requestIdFrom(header: string | string[] | undefined): string {
  const v = Array.isArray(header) ? header[0] : header;
  if (typeof v === 'string' && /^[\x21-\x7e][\x20-\x7e]{0,255}$/.test(v)) return v;
  return randomUUID();
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Per-request bookkeeping for metrics and abort handling. */
interface Exchange {
  endpoint: EndpointLabel;
  started: bigint;
  /** Set when the proxy itself cut the client response because the upstream failed mid-response. */
  upstreamFailed: boolean;
}

class ProxyServer implements PdProxy {
  private readonly server: http.Server;
  private readonly agent: http.Agent;
  private readonly pools: Record<Role, InstancePool>;
  private readonly health: HealthChecker;
  private readonly metrics = new ProxyMetrics();
  /** Abort controllers of the completion requests in flight. */
  private readonly active = new Set<AbortController>();
  private idleWaiters: (() => void)[] = [];
  private bound: ProxyAddress | undefined;
  private listening: Promise<ProxyAddress> | undefined;
  private closing: Promise<void> | undefined;
  private cutGrace: (() => void) | undefined;
  private graceCut = false;
  private readonly deps: CompletionDeps;
  private readonly mode: CompletionMode;
  private readonly layerwise: LayerwiseMode | undefined;

  constructor(private readonly o: ResolvedProxyOptions) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024, scheduling: 'lifo', timeout: 4000 });
    this.pools = {
      prefill: new InstancePool('prefill', createPolicy(o.prefillPolicy), o.healthCheck, o.log),
      decode: new InstancePool('decode', createPolicy(o.decodePolicy), o.healthCheck, o.log),
    };
    for (const url of o.prefill) this.pools.prefill.add(url);
    for (const url of o.decode) this.pools.decode.add(url);
    this.health = new HealthChecker([this.pools.prefill, this.pools.decode], o.healthCheck, this.agent);
    this.deps = {
      o,
      agent: this.agent,
      pools: this.pools,
      metrics: this.metrics,
      onRetry: (role, inst, e, requestId) => this.onRetry(role, inst, e, requestId),
      upstreamFailure: (res, role, e, requestId) => this.upstreamFailure(res, role, e, requestId),
    };
    this.layerwise = o.mode === 'layerwise' ? new LayerwiseMode(this.deps, () => this.metaserverUrl()) : undefined;
    this.mode = this.layerwise ?? (o.mode === 'push' ? new PushMode(this.deps, (url) => bootstrapOf(o, url)) : new PullMode(this.deps));
    this.server = http.createServer((req, res) => this.route(req, res));
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
  }

  // -------------------------------------------------------------------------------------------------------------
  // Lifecycle

  listen(): Promise<ProxyAddress> {
    if (this.closing !== undefined) return Promise.reject(new MooncakeError('CLOSED', 'the proxy is closed'));
    this.listening ??= new Promise<ProxyAddress>((resolve, reject) => {
      const onError = (e: Error): void => {
        this.listening = undefined;
        reject(new MooncakeError('INVALID_CONFIG', `cannot listen on ${this.o.host}:${this.o.port}: ${e.message}`, { cause: e, details: { host: this.o.host, port: this.o.port } }));
      };
      this.server.once('error', onError);
      this.server.listen({ host: this.o.host, port: this.o.port, backlog: this.o.backlog }, () => {
        this.server.off('error', onError);
        const a = this.server.address();
        const port = typeof a === 'object' && a !== null ? a.port : this.o.port;
        const host = this.o.host;
        const urlHost = host.includes(':') ? `[${host}]` : host;
        this.bound = { host, port, url: `http://${urlHost}:${port}` };
        this.health.start();
        if (this.o.admin && this.o.adminToken === undefined && !isLoopback(host)) {
          this.o.log('warn', `/admin/instances is open to anyone who can reach ${this.bound.url}; set adminToken (--admin-token) or turn it off (--no-admin)`);
        }
        this.o.log('info', `proxy listening on ${this.bound.url}`, {
          prefill: this.pools.prefill.all().map((i) => i.url),
          decode: this.pools.decode.all().map((i) => i.url),
        });
        resolve(this.bound);
      });
    });
    return this.listening;
  }

  address(): ProxyAddress | undefined {
    return this.closing === undefined ? this.bound : undefined;
  }

  close(options: ProxyCloseOptions = {}): Promise<void> {
    if (this.closing !== undefined) {
      // A second close({ graceMs: 0 }) (a second Ctrl-C) cuts the grace period short.
      if (options.graceMs === 0) {
        this.graceCut = true;
        this.cutGrace?.();
      }
      return this.closing;
    }
    this.closing = this.shutdown(options.graceMs ?? this.o.shutdownGraceMs);
    return this.closing;
  }

  private async shutdown(graceMs: number): Promise<void> {
    const wasListening = this.server.listening;
    const serverClosed = new Promise<void>((resolve) => {
      if (!wasListening) resolve();
      else this.server.close(() => resolve());
    });
    this.server.closeIdleConnections();
    await this.health.stop();
    if (this.active.size > 0 && graceMs > 0 && !this.graceCut) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(t);
          this.cutGrace = undefined;
          resolve();
        };
        const t = setTimeout(done, graceMs);
        this.cutGrace = done;
        this.idleWaiters.push(done);
      });
    }
    for (const ctrl of this.active) ctrl.abort(new MooncakeError('CLOSED', 'the proxy is shutting down'));
    this.server.closeAllConnections();
    await serverClosed;
    this.agent.destroy();
    this.bound = undefined;
    this.o.log('info', 'proxy closed');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Instances and stats

  private pool(role: Role): InstancePool {
    if (!(ROLES as readonly string[]).includes(role)) {
      throw new MooncakeError('INVALID_CONFIG', `role=${JSON.stringify(role)}: expected "prefill" or "decode"`, { details: { option: 'role', value: role } });
    }
    return this.pools[role];
  }

  addInstance(role: Role, url: string): InstanceSnapshot {
    const pool = this.pool(role);
    const inst = pool.add(url);
    if (this.server.listening && this.closing === undefined) void this.health.check(pool, inst);
    return inst.snapshot();
  }

  removeInstance(role: Role, url: string): boolean {
    return this.pool(role).remove(url) !== undefined;
  }

  instances(role?: Role): InstanceSnapshot[] {
    const roles = role === undefined ? ROLES : [role];
    return roles.flatMap((r) => this.pool(r).all().map((i) => i.snapshot()));
  }

  collectMetrics(): MetricFamily[] {
    return this.metrics.families([this.pools.prefill, this.pools.decode]);
  }

  stats(): ProxyStats {
    return {
      ...this.metrics.counters(),
      listening: this.server.listening,
      instances: { prefill: this.instances('prefill'), decode: this.instances('decode') },
    };
  }

  checkHealth(): Promise<void> {
    return this.health.checkAll();
  }

  // -------------------------------------------------------------------------------------------------------------
  // Routing

  private route(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?', 1)[0];
    const ex: Exchange = {
      endpoint: KNOWN_ENDPOINTS.has(path) ? (path as EndpointLabel) : 'other',
      started: process.hrtime.bigint(),
      upstreamFailed: false,
    };
    res.once('close', () => {
      const seconds = Number(process.hrtime.bigint() - ex.started) / 1e9;
      const complete = res.writableFinished;
      const status = complete || ex.upstreamFailed ? res.statusCode : 499;
      this.metrics.recordRequest(ex.endpoint, status, seconds);
    });
    if (this.closing !== undefined) res.setHeader('connection', 'close');
    let work: Promise<void>;
    if (COMPLETION_PATHS.has(path)) work = this.completion(req, res, path, ex);
    else if (path === '/v1/models') work = this.models(req, res, ex);
    else if (path === '/healthcheck') work = Promise.resolve(this.healthcheck(req, res));
    else if (path === '/metrics') work = Promise.resolve(this.metricsEndpoint(req, res));
    else if (path === '/admin/instances' && this.o.admin) work = this.admin(req, res);
    else if (path === '/reset_prefix_cache' && this.o.resetPrefixCache) work = this.resetPrefixCache(req, res);
    else if (path === '/v1/metaserver' && this.layerwise !== undefined) work = this.metaserver(req, res);
    else work = Promise.resolve(this.sendError(res, 404, `no route for ${req.method ?? 'GET'} ${path}`));
    work.catch((e: unknown) => {
      this.o.log('error', `unexpected proxy failure: ${e instanceof Error ? e.message : String(e)}`, { path });
      if (!res.headersSent) this.sendError(res, 500, 'internal proxy error');
      else res.destroy();
    });
  }

  private send(res: http.ServerResponse, status: number, body: Buffer | string, headers: http.OutgoingHttpHeaders = {}): void {
    if (res.headersSent || res.destroyed) return;
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': buf.length, ...headers });
    res.end(buf);
  }

  private sendError(res: http.ServerResponse, status: number, message: string, headers: http.OutgoingHttpHeaders = {}): void {
    this.send(res, status, errorBody(status, message, statusType(status)), headers);
  }

  private methodNotAllowed(res: http.ServerResponse, method: string | undefined, allow: string): void {
    this.sendError(res, 405, `method ${method ?? ''} not allowed; use ${allow}`, { allow });
  }

  /** Reads and parses a JSON object body; answers 400/413 itself and returns undefined on failure. */
  private async jsonBody(req: http.IncomingMessage, res: http.ServerResponse, required: boolean): Promise<JsonObject | undefined | null> {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > this.o.maxBodyBytes) {
      this.sendError(res, 413, `request body of ${declared} bytes is larger than the ${this.o.maxBodyBytes} bytes allowed`, { connection: 'close' });
      req.resume();
      return undefined;
    }
    let raw: Buffer;
    try {
      raw = await readBody(req, this.o.maxBodyBytes, 'request body');
    } catch (e) {
      if (e instanceof MooncakeError && e.details?.tooLarge === true) {
        this.sendError(res, 413, `request body is larger than the ${this.o.maxBodyBytes} bytes allowed`, { connection: 'close' });
      }
      return undefined; // otherwise the client went away while sending
    }
    if (raw.length === 0 && !required) return null;
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      this.sendError(res, 400, 'request body is not valid JSON');
      return undefined;
    }
    if (!isJsonObject(parsed)) {
      this.sendError(res, 400, 'request body must be a JSON object');
      return undefined;
    }
    return parsed;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Completions

  private async completion(req: http.IncomingMessage, res: http.ServerResponse, path: string, ex: Exchange): Promise<void> {
    if (req.method !== 'POST') {
      this.methodNotAllowed(res, req.method, 'POST');
      return;
    }
    if (this.closing !== undefined) {
      this.sendError(res, 503, 'the proxy is shutting down');
      return;
    }
    const ctrl = new AbortController();
    const signal = ctrl.signal;
    this.active.add(ctrl);
    this.metrics.inFlightChange(1);
    res.once('close', () => {
      if (!res.writableFinished && !ex.upstreamFailed && !signal.aborted) {
        this.metrics.clientAbort();
        ctrl.abort(new MooncakeError('ABORT_ERR', 'the client disconnected'));
      }
      this.metrics.inFlightChange(-1);
      this.active.delete(ctrl);
      if (this.active.size === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    });

    const body = await this.jsonBody(req, res, true);
    if (body === undefined || body === null) return;
    const requestId = requestIdFrom(req.headers['x-request-id']);
    const route: { prefill?: string; decode?: string } = {};
    res.once('close', () => {
      const ms = Number(process.hrtime.bigint() - ex.started) / 1e6;
      const status = res.writableFinished || ex.upstreamFailed ? res.statusCode : 499;
      this.o.log('debug', `${path} ${status} in ${ms.toFixed(1)} ms`, { requestId, ...route });
    });
    let promptTokens = 0;
    try {
      promptTokens = Math.max(0, Math.floor((this.o.estimateTokens ?? estimatePromptTokens)(body)) || 0);
    } catch (e) {
      this.o.log('warn', `estimateTokens threw: ${e instanceof Error ? e.message : String(e)}`);
    }
    const ctx: CompletionContext = {
      path,
      body,
      requestId,
      headers: this.upstreamHeaders(req),
      promptTokens,
      decodeTokens: promptTokens + requestedOutputTokens(body),
      signal,
      fail: (reason) => ctrl.abort(reason),
      res,
      route,
      markUpstreamFailed: () => {
        ex.upstreamFailed = true;
      },
    };
    await runCompletion(this.deps, this.mode, ctx);
  }

  /**
   * Headers for an upstream request: the client's (minus hop-by-hop ones), JSON, and the API key: with
   * `authorization: 'api-key'` (default, as vllm-ascend) it replaces the client's Authorization; with 'client'
   * it is sent only when the client sent none.
   */
  private upstreamHeaders(req: http.IncomingMessage): http.OutgoingHttpHeaders {
    const headers: http.OutgoingHttpHeaders = upstreamRequestHeaders(req.headers);
    headers['content-type'] = 'application/json'; // the proxy re-serialises the body as JSON
    if (this.o.apiKey !== undefined && (this.o.authorization === 'api-key' || headers.authorization === undefined)) {
      headers.authorization = `Bearer ${this.o.apiKey}`;
    }
    return headers;
  }

  /** Where layerwise decode instances post their params. */
  private metaserverUrl(): string {
    if (this.o.metaserverUrl !== undefined) return this.o.metaserverUrl;
    return `${this.bound?.url ?? `http://${this.o.host}:${this.o.port}`}/v1/metaserver`;
  }

  private onRetry(role: Role, inst: Instance, e: MooncakeError, requestId: string): void {
    this.metrics.retry(role);
    this.o.log('warn', `${role} ${inst.url} failed (${e.message}); retrying`, { requestId });
  }

  /** Answers the client after an upstream failure that happened before any response byte was sent. */
  private upstreamFailure(res: http.ServerResponse, role: Role, e: unknown, requestId: string): void {
    if (!(e instanceof MooncakeError)) {
      this.o.log('error', `${role} failed: ${String(e)}`, { requestId });
      this.sendError(res, 502, `${role} failed`, { 'x-request-id': requestId });
      return;
    }
    if (e.code === 'ABORT_ERR') return; // the client is gone
    const h = { 'x-request-id': requestId };
    if (e.code === 'CLOSED') return this.sendError(res, 503, 'the proxy is shutting down', h);
    if (e.code === 'TIMEOUT') {
      this.metrics.timeout(role);
      this.o.log('warn', `${role} timed out: ${e.message}`, { requestId });
      return this.sendError(res, 504, `${role} instance timed out: ${e.message}`, h);
    }
    if (e.details?.noInstance === true) return this.sendError(res, 503, `no ${role} instance is available`, h);
    this.o.log('warn', `${role} failed: ${e.message}`, { requestId });
    this.sendError(res, 502, `${role} instance failed: ${e.message}`, h);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Other endpoints

  /** GET /v1/models from the first healthy decode instance (prefill instances if there is no decode one). */
  private async models(req: http.IncomingMessage, res: http.ServerResponse, ex: Exchange): Promise<void> {
    if (req.method !== 'GET') return this.methodNotAllowed(res, req.method, 'GET');
    const ctrl = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) ctrl.abort(new MooncakeError('ABORT_ERR', 'the client disconnected'));
    });
    const pool = this.pools.decode.size > 0 ? this.pools.decode : this.pools.prefill;
    const headers = this.upstreamHeaders(req);
    delete headers['content-type'];
    let routed: Routed<http.IncomingMessage>;
    try {
      routed = await withRetries(pool, 0, this.o.retries, ctrl.signal, (inst) =>
        sendUpstream({
          agent: this.agent,
          origin: inst.url,
          method: 'GET',
          path: req.url ?? '/v1/models',
          headers,
          signal: ctrl.signal,
          connectTimeoutMs: this.o.timeouts.connectMs,
          idleTimeoutMs: this.o.timeouts.decodeIdleMs,
        }),
      );
    } catch (e) {
      this.upstreamFailure(res, pool.role, e, requestIdFrom(req.headers['x-request-id']));
      return;
    }
    const up = routed.result;
    up.once('close', () => routed.instance.release(0));
    res.writeHead(up.statusCode ?? 502, clientResponseHeaders(up.headers));
    await relay(up, res, () => {
      if (!ctrl.signal.aborted) ex.upstreamFailed = true;
    });
  }

  private healthcheck(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') return this.methodNotAllowed(res, req.method, 'GET');
    const count = (role: Role): { healthy: number; total: number } => ({ healthy: this.pools[role].healthyCount(), total: this.pools[role].size });
    const prefill = count('prefill');
    const decode = count('decode');
    const ok = prefill.healthy > 0 && decode.healthy > 0 && this.closing === undefined;
    this.send(res, ok ? 200 : 503, JSON.stringify({ status: ok ? 'ok' : 'unavailable', prefill, decode, in_flight: this.metrics.inFlight }));
  }

  private metricsEndpoint(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method !== 'GET') return this.methodNotAllowed(res, req.method, 'GET');
    this.send(res, 200, renderText(this.collectMetrics()), { 'content-type': PROMETHEUS_CONTENT_TYPE });
  }

  /**
   * /admin/instances
   *   GET                                   → 200 {prefill: [...], decode: [...]}
   *   POST   {role, url} | {role, instances} → 201 {added: [...]}       (400 bad input, 409 already present)
   *   DELETE {role, url} | {role, instances} or ?role=&url= → 200 {removed: [...]} (404 not present)
   * `type` is accepted for `role` (vllm-ascend's load balancer uses {type, instances}).
   */
  /** With `adminToken` set, answers 401 itself and returns false unless the request carries the token. */
  private adminAllowed(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (this.o.adminToken === undefined) return true;
    const auth = req.headers.authorization;
    const given = typeof req.headers['x-admin-token'] === 'string' ? req.headers['x-admin-token'] : typeof auth === 'string' && auth.startsWith('Bearer ') ? auth.slice(7) : '';
    if (safeEqual(given, this.o.adminToken)) return true;
    req.resume();
    this.sendError(res, 401, 'admin token missing or wrong', { 'www-authenticate': 'Bearer' });
    return false;
  }

  /**
   * POST /reset_prefix_cache: sent on (with its query string) to every prefill and decode instance at once, as
   * vllm-ascend's proxy does. 200 `{"reset": [...]}` when each answered 2xx; 500 `{"failed": [...], "reset":
   * [...]}` otherwise.
   */
  private async resetPrefixCache(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.adminAllowed(req, res)) return;
    req.resume();
    if (req.method !== 'POST') return this.methodNotAllowed(res, req.method, 'POST');
    const query = (req.url ?? '').includes('?') ? (req.url ?? '').slice((req.url ?? '').indexOf('?')) : '';
    const headers = this.upstreamHeaders(req);
    delete headers['content-type'];
    const instances = [...this.pools.prefill.all(), ...this.pools.decode.all()];
    const results = await Promise.all(
      instances.map(async (inst) => {
        const signal = AbortSignal.timeout(RESET_TIMEOUT_MS);
        try {
          const up = await sendUpstream({ agent: this.agent, origin: inst.url, method: 'POST', path: `/reset_prefix_cache${query}`, headers, signal, connectTimeoutMs: this.o.timeouts.connectMs, idleTimeoutMs: RESET_TIMEOUT_MS });
          await readBody(up, 1 << 20, `reset_prefix_cache answer from ${inst.url}`);
          const ok = (up.statusCode ?? 500) < 300;
          if (!ok) this.o.log('warn', `reset_prefix_cache on ${inst.url} answered ${up.statusCode}`);
          return { url: inst.url, ok };
        } catch (e) {
          this.o.log('warn', `reset_prefix_cache on ${inst.url} failed: ${e instanceof Error ? e.message : String(e)}`);
          return { url: inst.url, ok: false };
        }
      }),
    );
    const failed = results.filter((r) => !r.ok).map((r) => r.url);
    const reset = results.filter((r) => r.ok).map((r) => r.url);
    this.send(res, failed.length === 0 ? 200 : 500, JSON.stringify(failed.length === 0 ? { reset } : { failed, reset }));
  }

  /** POST /v1/metaserver (layerwise mode): decode's kv_transfer_params for a request; see LayerwiseMode. */
  private async metaserver(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      req.resume();
      return this.methodNotAllowed(res, req.method, 'POST');
    }
    const params = await this.jsonBody(req, res, true);
    if (params === undefined || params === null) return;
    await this.layerwise!.metaserver(params, (status, body) => this.send(res, status, JSON.stringify(body)));
  }

  private async admin(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.adminAllowed(req, res)) return;
    const method = req.method ?? 'GET';
    if (method === 'GET') {
      req.resume();
      return this.send(res, 200, JSON.stringify({ prefill: this.instances('prefill'), decode: this.instances('decode') }));
    }
    if (method !== 'POST' && method !== 'DELETE') {
      req.resume();
      return this.methodNotAllowed(res, method, 'GET, POST, DELETE');
    }
    let input: JsonObject | null | undefined = await this.jsonBody(req, res, method === 'POST');
    if (input === undefined) return;
    if (input === null) {
      const q = new URL(req.url ?? '/', 'http://proxy').searchParams;
      input = { role: q.get('role') ?? undefined, url: q.get('url') ?? undefined };
    }
    const role = input.role ?? input.type;
    if (role !== 'prefill' && role !== 'decode') {
      return this.sendError(res, 400, `"role" must be "prefill" or "decode", got ${JSON.stringify(role) ?? 'nothing'}`);
    }
    let urls: unknown[];
    if (typeof input.url === 'string') urls = [input.url];
    else if (Array.isArray(input.instances) && input.instances.length > 0) urls = input.instances;
    else return this.sendError(res, 400, 'give "url": "host:port" or "instances": ["host:port", ...]');
    const pool = this.pools[role];
    const origins: string[] = [];
    for (const u of urls) {
      try {
        origins.push(normalizeInstanceUrl(u, 'url'));
      } catch (e) {
        return this.sendError(res, 400, e instanceof Error ? e.message : String(e));
      }
    }
    if (method === 'POST') {
      const present = origins.filter((u, k) => pool.has(u) || origins.indexOf(u) !== k);
      if (present.length > 0) return this.sendError(res, 409, `${role} instance(s) already present: ${present.join(', ')}`);
      const added = origins.map((u) => this.addInstance(role, u));
      return this.send(res, 201, JSON.stringify({ added }));
    }
    const missing = origins.filter((u) => !pool.has(u));
    if (missing.length > 0) return this.sendError(res, 404, `${role} instance(s) not present: ${missing.join(', ')}`);
    for (const u of origins) this.removeInstance(role, u);
    return this.send(res, 200, JSON.stringify({ removed: origins }));
  }
}
