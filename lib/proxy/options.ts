/**
 * Proxy options: the programmatic shape, its defaults and validation. The command-line flags that map onto
 * them are in ./flags.ts.
 */
import { DEFAULT_BIND_HOST } from '../util/defaults';
import { MooncakeError } from '../errors';
import { intOption, optionError } from '../util/options';
import { DEFAULT_BOOTSTRAP_PORT } from '../kv/vllm/bootstrap';

export type Role = 'prefill' | 'decode';
export const ROLES: readonly Role[] = ['prefill', 'decode'];

/** How an instance is chosen among the healthy ones of a role. */
export type PolicyName = 'round-robin' | 'least-requests' | 'least-tokens';
export const POLICY_NAMES: readonly PolicyName[] = ['round-robin', 'least-requests', 'least-tokens'];

/**
 * How a completion request flows (see docs/proxy.md):
 * - 'pull' (vllm-ascend's MooncakeConnectorV1): prefill first, then decode with the kv_transfer_params prefill
 *   returned; decode reads the KV cache from prefill.
 * - 'layerwise' (vllm-ascend's layerwise connector): decode first, with `metaserver` pointing at this proxy's
 *   `/v1/metaserver`; decode POSTs its own params there, the proxy sends them to a prefill instance, which
 *   pushes the KV cache into decode layer by layer.
 * - 'push' (vLLM's own MooncakeConnector): prefill and decode at once, both given one `transfer_id`; decode
 *   also gets the prefill instance's bootstrap server and engine id, prefill an `X-data-parallel-rank`; decode
 *   asks prefill for the KV and prefill writes it.
 */
export type ProxyMode = 'pull' | 'layerwise' | 'push';
export const PROXY_MODES: readonly ProxyMode[] = ['pull', 'layerwise', 'push'];


export type ProxyLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type ProxyLogger = (level: ProxyLogLevel, message: string, fields?: Readonly<Record<string, unknown>>) => void;

export interface HealthCheckOptions {
  /** Run periodic health checks (default true). When false, instances are never ejected. */
  enabled?: boolean;
  /** Path each instance is probed with a GET (default '/health', what vLLM serves). */
  path?: string;
  /** Time between two probe rounds (default 5000 ms). */
  intervalMs?: number;
  /** A probe that takes longer than this fails (default 2000 ms). */
  timeoutMs?: number;
  /** Consecutive failures (probes or connection errors) that eject an instance (default 3). */
  unhealthyThreshold?: number;
  /** Consecutive successful probes that bring an ejected instance back (default 2). */
  healthyThreshold?: number;
}

export interface RetryOptions {
  /** Extra attempts after a failure, each on another instance when there is one (default 3). */
  maxRetries?: number;
  /**
   * Also retry when an instance answers with an HTTP error status other than 400 (default true, as vllm-ascend's
   * proxy). False retries connection failures only and hands any HTTP error to the client at once.
   */
  onHttpError?: boolean;
  /** Delay before the first retry, doubled for each further one (default 1 ms, as vllm-ascend's 0.001 s). */
  baseDelayMs?: number;
  /** Upper bound of the retry delay (default 1000 ms). */
  maxDelayMs?: number;
}

export interface TimeoutOptions {
  /** TCP connect to an upstream instance (default 5000 ms); a connect timeout is retried. */
  connectMs?: number;
  /** Whole prefill request, from sending to the last byte of its response (default 300000 ms). */
  prefillMs?: number;
  /** Longest silence from a decode instance, before its headers or between two chunks (default 300000 ms). */
  decodeIdleMs?: number;
}

/** Re-dispatch when decode preempts a request it got remote KV for and answers `stop_reason: "recomputed"`. */
export interface RecomputeOptions {
  /**
   * Default true, as vllm-ascend's proxy: the text generated so far is appended to the prompt, the output budget
   * reduced, and the request goes to a new prefill/decode pair; the client sees one continuous answer. False
   * passes the "recomputed" answer through.
   */
  enabled?: boolean;
  /** Re-dispatches per client request before the "recomputed" answer is passed through (default 3). */
  maxRedispatches?: number;
}

export interface ProxyOptions {
  /** Address to listen on (default '127.0.0.1': nothing here authenticates; '0.0.0.0' serves other machines). */
  host?: string;
  /** Port to listen on (default 0: a free port, reported by listen(); the `proxy` command defaults to 8000). */
  port?: number;
  /** Request flow (default 'pull'). */
  mode?: ProxyMode;
  /**
   * Layerwise mode: the URL decode instances POST their kv_transfer_params to (default: this proxy's
   * `<listen url>/v1/metaserver`; required when listening on a wildcard address, which decode cannot reach).
   */
  metaserverUrl?: string;
  /**
   * Push mode: the port of every prefill instance's bootstrap server, on the instance's host (default 8998,
   * vLLM's VLLM_MOONCAKE_BOOTSTRAP_PORT).
   */
  bootstrapPort?: number;
  /** Push mode: bootstrap ports (or 'host:port' addresses) of particular prefill instances, keyed by their address. */
  bootstrapPorts?: Readonly<Record<string, number | string>>;
  /** Prefill instances: 'host:port' or 'http://host:port'. May be empty and filled through the admin API. */
  prefill?: readonly string[];
  /** Decode instances: 'host:port' or 'http://host:port'. */
  decode?: readonly string[];
  /** Policy for both roles (default 'round-robin'). */
  policy?: PolicyName;
  /** Policy for prefill instances; overrides `policy`. */
  prefillPolicy?: PolicyName;
  /** Policy for decode instances; overrides `policy`. */
  decodePolicy?: PolicyName;
  healthCheck?: HealthCheckOptions;
  retries?: RetryOptions;
  timeouts?: TimeoutOptions;
  /** Sent upstream as `Authorization: Bearer <apiKey>` (the `proxy` command reads OPENAI_API_KEY). */
  apiKey?: string;
  /**
   * Whose Authorization goes upstream when `apiKey` is set: 'api-key' (default, as vllm-ascend's proxy) sends the
   * proxy's key on every request; 'client' passes the client's header through and sends the key only when the
   * client sent none.
   */
  authorization?: 'api-key' | 'client';
  /** Send `min_tokens: 1` to prefill on every request (default true, as vllm-ascend); false: only when the client set min_tokens. */
  prefillMinTokens?: boolean;
  /** Copy prefill's `usage.prompt_tokens_details.cached_tokens` into decode's usage (default true, as vllm-ascend). */
  copyCachedTokens?: boolean;
  recompute?: RecomputeOptions;
  /** Serve `POST /reset_prefix_cache`, fanned out to every instance (default true; behind adminToken when set). */
  resetPrefixCache?: boolean;
  /** Serve the `/admin/instances` API (default true). */
  admin?: boolean;
  /** When set, admin requests must carry `Authorization: Bearer <adminToken>` or `x-admin-token: <adminToken>`. */
  adminToken?: string;
  /** Largest client request body accepted (default 32 MiB); larger ones get 413. */
  maxBodyBytes?: number;
  /** Largest prefill response read (default 16 MiB). */
  maxPrefillResponseBytes?: number;
  /** How long close() lets in-flight requests finish before cutting them (default 10000 ms). */
  shutdownGraceMs?: number;
  /** Listen backlog (default 2048). */
  backlog?: number;
  /**
   * Token estimate of a request's prompt, used by the 'least-tokens' policy. The default counts token ids, or
   * prompt/message text bytes divided by 4.
   */
  estimateTokens?: (body: Readonly<Record<string, unknown>>) => number;
  log?: ProxyLogger;
}

export interface ResolvedHealthCheck {
  enabled: boolean;
  path: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
}

export interface ResolvedProxyOptions {
  host: string;
  port: number;
  mode: ProxyMode;
  metaserverUrl: string | undefined;
  bootstrapPort: number;
  /** Normalised prefill instance origin → 'http://host:port' of its bootstrap server. */
  bootstrapAddresses: Map<string, string>;
  prefill: string[];
  decode: string[];
  prefillPolicy: PolicyName;
  decodePolicy: PolicyName;
  healthCheck: ResolvedHealthCheck;
  retries: Required<RetryOptions>;
  timeouts: Required<TimeoutOptions>;
  apiKey: string | undefined;
  authorization: 'api-key' | 'client';
  prefillMinTokens: boolean;
  copyCachedTokens: boolean;
  recompute: Required<RecomputeOptions>;
  resetPrefixCache: boolean;
  admin: boolean;
  adminToken: string | undefined;
  maxBodyBytes: number;
  maxPrefillResponseBytes: number;
  shutdownGraceMs: number;
  backlog: number;
  estimateTokens: ((body: Readonly<Record<string, unknown>>) => number) | undefined;
  log: ProxyLogger;
}

export { DEFAULT_PROXY_PORT } from '../util/defaults';
export const DEFAULT_PREFILLER_PORT = 8100;
export const DEFAULT_DECODER_PORT = 8200;

const noLog: ProxyLogger = () => {};


function int(name: string, value: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  return intOption(name, value, min, max) ?? fallback;
}

function bool(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw optionError(name, value, 'expected a boolean');
  return value;
}

function oneOf<T extends string>(name: string, value: unknown, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) throw optionError(name, value, `expected one of ${choices.join(', ')}`);
  return value as T;
}

function policy(name: string, value: unknown, fallback: PolicyName): PolicyName {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(POLICY_NAMES as readonly string[]).includes(value)) {
    throw optionError(name, value, `expected one of ${POLICY_NAMES.join(', ')}`);
  }
  return value as PolicyName;
}

/**
 * Normalises an instance address to its origin, 'http://host:port'. Accepts 'host:port', '[v6]:port' and
 * 'http://host:port' (a trailing '/' is dropped; paths, queries and https are refused).
 */
export function normalizeInstanceUrl(value: unknown, name = 'instance'): string {
  if (typeof value !== 'string' || value.trim() === '') throw optionError(name, value, 'expected "host:port" or "http://host:port"');
  const text = value.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch (cause) {
    throw new MooncakeError('INVALID_CONFIG', optionError(name, value, 'not a valid address').message, { cause, details: { option: name, value } });
  }
  if (url.protocol !== 'http:') throw optionError(name, value, 'only http:// upstreams are supported');
  if (url.username !== '' || url.password !== '') throw optionError(name, value, 'credentials in the address are not supported');
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
    throw optionError(name, value, 'expected an origin without a path or query');
  }
  if (url.port === '' && !/:80\/?$/.test(text)) throw optionError(name, value, 'a port is required');
  return url.origin;
}

/** Builds the origin of a host and port the way the proxy's --*-hosts / --*-ports flags pair them. */
export function hostPortToUrl(host: string, port: number): string {
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `http://${h}:${port}`;
}

function instanceList(name: string, value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw optionError(name, value, 'expected an array of addresses');
  const out: string[] = [];
  for (let i = 0; i < value.length; i++) {
    const url = normalizeInstanceUrl(value[i], `${name}[${i}]`);
    if (out.includes(url)) throw optionError(`${name}[${i}]`, value[i], 'listed twice');
    out.push(url);
  }
  return out;
}

/** `bootstrapPorts` normalised: instance origin → bootstrap server origin (a bare port is on the instance's host). */
function bootstrapAddresses(value: unknown): Map<string, string> {
  const out = new Map<string, string>();
  if (value === undefined) return out;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw optionError('bootstrapPorts', value, 'expected an object { "host:port": port }');
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const origin = normalizeInstanceUrl(k, `bootstrapPorts key ${k}`);
    if (typeof v === 'number') {
      const u = new URL(origin);
      out.set(origin, `http://${u.hostname}:${int(`bootstrapPorts[${k}]`, v, 0, 1, 65535)}`);
    } else out.set(origin, normalizeInstanceUrl(v, `bootstrapPorts[${k}]`));
  }
  return out;
}

/** The bootstrap server of prefill instance `origin` (push mode). */
export function bootstrapOf(o: Pick<ResolvedProxyOptions, 'bootstrapPort' | 'bootstrapAddresses'>, origin: string): string {
  const known = o.bootstrapAddresses.get(origin);
  if (known !== undefined) return known;
  const u = new URL(origin);
  return `http://${u.hostname}:${o.bootstrapPort}`;
}

/** Applies defaults and validates; throws MooncakeError('INVALID_CONFIG') naming the option and value. */
export function resolveProxyOptions(options: ProxyOptions): ResolvedProxyOptions {
  if (options === null || typeof options !== 'object') throw optionError('options', options, 'expected an object');
  const host = options.host ?? DEFAULT_BIND_HOST;
  if (typeof host !== 'string' || host === '') throw optionError('host', host, 'expected a host name or address');
  const base = policy('policy', options.policy, 'round-robin');
  const hc = options.healthCheck ?? {};
  const path = hc.path ?? '/health';
  if (typeof path !== 'string' || !path.startsWith('/')) throw optionError('healthCheck.path', path, 'expected a path starting with "/"');
  const r = options.retries ?? {};
  const t = options.timeouts ?? {};
  for (const key of ['apiKey', 'adminToken'] as const) {
    const v = options[key];
    if (v !== undefined && (typeof v !== 'string' || v === '' || /[\r\n]/.test(v))) throw optionError(key, '<redacted>', 'expected a non-empty single-line string');
  }
  if (options.estimateTokens !== undefined && typeof options.estimateTokens !== 'function') {
    throw optionError('estimateTokens', typeof options.estimateTokens, 'expected a function');
  }
  if (options.log !== undefined && typeof options.log !== 'function') throw optionError('log', typeof options.log, 'expected a function');
  const rc = options.recompute ?? {};
  const mode = oneOf('mode', options.mode, PROXY_MODES, 'pull');
  let metaserverUrl: string | undefined;
  if (options.metaserverUrl !== undefined) {
    const u = typeof options.metaserverUrl === 'string' && /^https?:\/\/[^/]+\/\S*$/.test(options.metaserverUrl) ? options.metaserverUrl : undefined;
    if (u === undefined) throw optionError('metaserverUrl', options.metaserverUrl, 'expected a URL like http://10.0.0.1:8000/v1/metaserver');
    metaserverUrl = u;
  } else if (mode === 'layerwise' && ['0.0.0.0', '::', '0:0:0:0:0:0:0:0'].includes(host)) {
    throw optionError('host', host, 'layerwise decode instances must reach this proxy: listen on an address they can reach, or give metaserverUrl');
  }
  const resolved: ResolvedProxyOptions = {
    host,
    port: int('port', options.port, 0, 0, 65535),
    mode,
    metaserverUrl,
    bootstrapPort: int('bootstrapPort', options.bootstrapPort, DEFAULT_BOOTSTRAP_PORT, 1, 65535),
    bootstrapAddresses: bootstrapAddresses(options.bootstrapPorts),
    prefill: instanceList('prefill', options.prefill),
    decode: instanceList('decode', options.decode),
    prefillPolicy: policy('prefillPolicy', options.prefillPolicy, base),
    decodePolicy: policy('decodePolicy', options.decodePolicy, base),
    healthCheck: {
      enabled: hc.enabled ?? true,
      path,
      intervalMs: int('healthCheck.intervalMs', hc.intervalMs, 5000, 1, 86_400_000),
      timeoutMs: int('healthCheck.timeoutMs', hc.timeoutMs, 2000, 1, 86_400_000),
      unhealthyThreshold: int('healthCheck.unhealthyThreshold', hc.unhealthyThreshold, 3, 1, 1000),
      healthyThreshold: int('healthCheck.healthyThreshold', hc.healthyThreshold, 2, 1, 1000),
    },
    retries: {
      maxRetries: int('retries.maxRetries', r.maxRetries, 3, 0, 100),
      onHttpError: bool('retries.onHttpError', r.onHttpError, true),
      baseDelayMs: int('retries.baseDelayMs', r.baseDelayMs, 1, 0, 60_000),
      maxDelayMs: int('retries.maxDelayMs', r.maxDelayMs, 1000, 0, 600_000),
    },
    timeouts: {
      connectMs: int('timeouts.connectMs', t.connectMs, 5000, 1, 600_000),
      prefillMs: int('timeouts.prefillMs', t.prefillMs, 300_000, 1, 86_400_000),
      decodeIdleMs: int('timeouts.decodeIdleMs', t.decodeIdleMs, 300_000, 1, 86_400_000),
    },
    apiKey: options.apiKey,
    authorization: oneOf('authorization', options.authorization, ['api-key', 'client'] as const, 'api-key'),
    prefillMinTokens: bool('prefillMinTokens', options.prefillMinTokens, true),
    copyCachedTokens: bool('copyCachedTokens', options.copyCachedTokens, true),
    recompute: {
      enabled: bool('recompute.enabled', rc.enabled, true),
      maxRedispatches: int('recompute.maxRedispatches', rc.maxRedispatches, 3, 0, 100),
    },
    resetPrefixCache: bool('resetPrefixCache', options.resetPrefixCache, true),
    admin: options.admin ?? true,
    adminToken: options.adminToken,
    maxBodyBytes: int('maxBodyBytes', options.maxBodyBytes, 32 * 1024 * 1024, 1, 2 ** 31 - 1),
    maxPrefillResponseBytes: int('maxPrefillResponseBytes', options.maxPrefillResponseBytes, 16 * 1024 * 1024, 1, 2 ** 31 - 1),
    shutdownGraceMs: int('shutdownGraceMs', options.shutdownGraceMs, 10_000, 0, 3_600_000),
    backlog: int('backlog', options.backlog, 2048, 1, 65535),
    estimateTokens: options.estimateTokens,
    log: options.log ?? noLog,
  };
  if (typeof resolved.healthCheck.enabled !== 'boolean') throw optionError('healthCheck.enabled', hc.enabled, 'expected a boolean');
  if (typeof resolved.admin !== 'boolean') throw optionError('admin', options.admin, 'expected a boolean');
  return resolved;
}
