/**
 * Proxy options: the programmatic shape, its defaults and validation, and the command-line flags
 * (the seed's `--host --port --prefiller-hosts ... --prefiller-ports ... --decoder-hosts ... --decoder-ports ...`,
 * space-separated lists, plus mooncake-node's own tuning flags).
 */
import { MooncakeError, describeValue } from '../errors';

export type Role = 'prefill' | 'decode';
export const ROLES: readonly Role[] = ['prefill', 'decode'];

/** How an instance is chosen among the healthy ones of a role. */
export type PolicyName = 'round-robin' | 'least-requests' | 'least-tokens';
export const POLICY_NAMES: readonly PolicyName[] = ['round-robin', 'least-requests', 'least-tokens'];

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
  /** Extra attempts after a connection failure, each on another instance when there is one (default 3). */
  maxRetries?: number;
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

export interface ProxyOptions {
  /** Address to listen on (default '127.0.0.1'). */
  host?: string;
  /** Port to listen on (default 8000, as the seed's proxy); 0 picks a free port. */
  port?: number;
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
  /** Sent as `Authorization: Bearer <apiKey>` upstream when the client sent no Authorization header. */
  apiKey?: string;
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
  prefill: string[];
  decode: string[];
  prefillPolicy: PolicyName;
  decodePolicy: PolicyName;
  healthCheck: ResolvedHealthCheck;
  retries: Required<RetryOptions>;
  timeouts: Required<TimeoutOptions>;
  apiKey: string | undefined;
  admin: boolean;
  adminToken: string | undefined;
  maxBodyBytes: number;
  maxPrefillResponseBytes: number;
  shutdownGraceMs: number;
  backlog: number;
  estimateTokens: ((body: Readonly<Record<string, unknown>>) => number) | undefined;
  log: ProxyLogger;
}

export const DEFAULT_PROXY_PORT = 8000;
export const DEFAULT_PREFILLER_PORT = 8100;
export const DEFAULT_DECODER_PORT = 8200;

const noLog: ProxyLogger = () => {};

function invalid(name: string, value: unknown, why: string): MooncakeError {
  return new MooncakeError('INVALID_CONFIG', `${name}=${describeValue(value)}: ${why}`, {
    details: { option: name, value },
  });
}

function int(name: string, value: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(name, value, `expected an integer from ${min} to ${max}`);
  }
  return value;
}

function policy(name: string, value: unknown, fallback: PolicyName): PolicyName {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(POLICY_NAMES as readonly string[]).includes(value)) {
    throw invalid(name, value, `expected one of ${POLICY_NAMES.join(', ')}`);
  }
  return value as PolicyName;
}

/**
 * Normalises an instance address to its origin, 'http://host:port'. Accepts 'host:port', '[v6]:port' and
 * 'http://host:port' (a trailing '/' is dropped; paths, queries and https are refused).
 */
export function normalizeInstanceUrl(value: unknown, name = 'instance'): string {
  if (typeof value !== 'string' || value.trim() === '') throw invalid(name, value, 'expected "host:port" or "http://host:port"');
  const text = value.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch (cause) {
    throw new MooncakeError('INVALID_CONFIG', `${name}=${describeValue(value)}: not a valid address`, { cause, details: { option: name, value } });
  }
  if (url.protocol !== 'http:') throw invalid(name, value, 'only http:// upstreams are supported');
  if (url.username !== '' || url.password !== '') throw invalid(name, value, 'credentials in the address are not supported');
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
    throw invalid(name, value, 'expected an origin without a path or query');
  }
  if (url.port === '' && !/:80\/?$/.test(text)) throw invalid(name, value, 'a port is required');
  return url.origin;
}

/** Builds the origin of a host and port the way the seed's flags pair them. */
export function hostPortToUrl(host: string, port: number): string {
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `http://${h}:${port}`;
}

function instanceList(name: string, value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw invalid(name, value, 'expected an array of addresses');
  const out: string[] = [];
  for (let i = 0; i < value.length; i++) {
    const url = normalizeInstanceUrl(value[i], `${name}[${i}]`);
    if (out.includes(url)) throw invalid(`${name}[${i}]`, value[i], 'listed twice');
    out.push(url);
  }
  return out;
}

/** Applies defaults and validates; throws MooncakeError('INVALID_CONFIG') naming the option and value. */
export function resolveProxyOptions(options: ProxyOptions): ResolvedProxyOptions {
  if (options === null || typeof options !== 'object') throw invalid('options', options, 'expected an object');
  const host = options.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw invalid('host', host, 'expected a host name or address');
  const base = policy('policy', options.policy, 'round-robin');
  const hc = options.healthCheck ?? {};
  const path = hc.path ?? '/health';
  if (typeof path !== 'string' || !path.startsWith('/')) throw invalid('healthCheck.path', path, 'expected a path starting with "/"');
  const r = options.retries ?? {};
  const t = options.timeouts ?? {};
  for (const key of ['apiKey', 'adminToken'] as const) {
    const v = options[key];
    if (v !== undefined && (typeof v !== 'string' || v === '' || /[\r\n]/.test(v))) throw invalid(key, '<redacted>', 'expected a non-empty single-line string');
  }
  if (options.estimateTokens !== undefined && typeof options.estimateTokens !== 'function') {
    throw invalid('estimateTokens', typeof options.estimateTokens, 'expected a function');
  }
  if (options.log !== undefined && typeof options.log !== 'function') throw invalid('log', typeof options.log, 'expected a function');
  const resolved: ResolvedProxyOptions = {
    host,
    port: int('port', options.port, DEFAULT_PROXY_PORT, 0, 65535),
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
      baseDelayMs: int('retries.baseDelayMs', r.baseDelayMs, 1, 0, 60_000),
      maxDelayMs: int('retries.maxDelayMs', r.maxDelayMs, 1000, 0, 600_000),
    },
    timeouts: {
      connectMs: int('timeouts.connectMs', t.connectMs, 5000, 1, 600_000),
      prefillMs: int('timeouts.prefillMs', t.prefillMs, 300_000, 1, 86_400_000),
      decodeIdleMs: int('timeouts.decodeIdleMs', t.decodeIdleMs, 300_000, 1, 86_400_000),
    },
    apiKey: options.apiKey,
    admin: options.admin ?? true,
    adminToken: options.adminToken,
    maxBodyBytes: int('maxBodyBytes', options.maxBodyBytes, 32 * 1024 * 1024, 1, 2 ** 31 - 1),
    maxPrefillResponseBytes: int('maxPrefillResponseBytes', options.maxPrefillResponseBytes, 16 * 1024 * 1024, 1, 2 ** 31 - 1),
    shutdownGraceMs: int('shutdownGraceMs', options.shutdownGraceMs, 10_000, 0, 3_600_000),
    backlog: int('backlog', options.backlog, 2048, 1, 65535),
    estimateTokens: options.estimateTokens,
    log: options.log ?? noLog,
  };
  if (typeof resolved.healthCheck.enabled !== 'boolean') throw invalid('healthCheck.enabled', hc.enabled, 'expected a boolean');
  if (typeof resolved.admin !== 'boolean') throw invalid('admin', options.admin, 'expected a boolean');
  return resolved;
}

// ---------------------------------------------------------------------------------------------------------------
// Command line

export interface ProxyCommandOptions {
  help: boolean;
  logLevel: ProxyLogLevel | 'silent';
  options: ProxyOptions;
}

interface FlagSpec {
  /** Canonical name without dashes. */
  name: string;
  aliases?: string[];
  kind: 'string' | 'int' | 'list' | 'int-list' | 'bool';
}

const FLAGS: FlagSpec[] = [
  { name: 'host', kind: 'string' },
  { name: 'port', kind: 'int' },
  { name: 'prefiller-hosts', aliases: ['prefiller-host'], kind: 'list' },
  { name: 'prefiller-ports', aliases: ['prefiller-port'], kind: 'int-list' },
  { name: 'decoder-hosts', aliases: ['decoder-host'], kind: 'list' },
  { name: 'decoder-ports', aliases: ['decoder-port'], kind: 'int-list' },
  { name: 'policy', kind: 'string' },
  { name: 'prefiller-policy', kind: 'string' },
  { name: 'decoder-policy', kind: 'string' },
  { name: 'max-retries', kind: 'int' },
  { name: 'retry-delay-ms', kind: 'int' },
  { name: 'health-path', kind: 'string' },
  { name: 'health-interval-ms', kind: 'int' },
  { name: 'health-timeout-ms', kind: 'int' },
  { name: 'unhealthy-threshold', kind: 'int' },
  { name: 'healthy-threshold', kind: 'int' },
  { name: 'no-health-check', kind: 'bool' },
  { name: 'connect-timeout-ms', kind: 'int' },
  { name: 'prefill-timeout-ms', kind: 'int' },
  { name: 'decode-timeout-ms', kind: 'int' },
  { name: 'api-key', kind: 'string' },
  { name: 'admin-token', kind: 'string' },
  { name: 'no-admin', kind: 'bool' },
  { name: 'max-body-bytes', kind: 'int' },
  { name: 'shutdown-grace-ms', kind: 'int' },
  { name: 'log-level', kind: 'string' },
  { name: 'help', aliases: ['h'], kind: 'bool' },
];

export const PROXY_USAGE = `Usage: mooncake-node proxy [flags]

Routes OpenAI-compatible requests to a prefill instance (max_tokens=1, kv_transfer_params.do_remote_decode=true)
and then to a decode instance (the client's request plus the kv_transfer_params prefill returned).

  --host H                      listen address (default 127.0.0.1)
  --port P                      listen port (default ${DEFAULT_PROXY_PORT})
  --prefiller-hosts H [H ...]   prefill hosts, space-separated (default localhost)
  --prefiller-ports P [P ...]   prefill ports, one per host, same order (default ${DEFAULT_PREFILLER_PORT})
  --decoder-hosts H [H ...]     decode hosts (default localhost)
  --decoder-ports P [P ...]     decode ports, one per host (default ${DEFAULT_DECODER_PORT})
  --policy NAME                 round-robin | least-requests | least-tokens (default round-robin)
  --prefiller-policy NAME       policy for prefill instances only
  --decoder-policy NAME         policy for decode instances only
  --max-retries N               retries after a connection failure, on another instance (default 3)
  --retry-delay-ms N            first retry delay, doubled each time (default 1)
  --health-path PATH            health probe path (default /health)
  --health-interval-ms N        time between probe rounds (default 5000)
  --health-timeout-ms N         probe timeout (default 2000)
  --unhealthy-threshold N       consecutive failures that eject an instance (default 3)
  --healthy-threshold N         consecutive good probes that bring it back (default 2)
  --no-health-check             never probe nor eject
  --connect-timeout-ms N        upstream connect timeout (default 5000)
  --prefill-timeout-ms N        whole prefill request timeout (default 300000)
  --decode-timeout-ms N         longest silence from a decode instance (default 300000)
  --api-key KEY                 Authorization sent upstream when the client sends none (default $OPENAI_API_KEY)
  --admin-token TOKEN           require this bearer token on /admin/instances
  --no-admin                    do not serve /admin/instances
  --max-body-bytes N            largest accepted request body (default 33554432)
  --shutdown-grace-ms N         time in-flight requests get on SIGINT/SIGTERM (default 10000)
  --log-level LEVEL             debug | info | warn | error | silent (default info)
  --help                        show this text
`;

function parseIntFlag(flag: string, text: string): number {
  if (!/^-?\d+$/.test(text)) throw invalid(`--${flag}`, text, 'expected an integer');
  return Number(text);
}

/**
 * Parses the proxy's flags. Lists are space-separated (`--prefiller-hosts a b --prefiller-ports 8100 8101`);
 * `--flag=value` also works. Hosts and ports pair up by position and the two lists must have the same length.
 */
export function parseProxyArgs(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = {}): ProxyCommandOptions {
  const byName = new Map<string, FlagSpec>();
  for (const f of FLAGS) {
    byName.set(f.name, f);
    for (const a of f.aliases ?? []) byName.set(a, f);
  }
  const values = new Map<string, string[]>();
  const seen = new Set<string>();
  let i = 0;
  while (i < argv.length) {
    const token = argv[i];
    if (!token.startsWith('-') || token === '-' || token === '--') throw invalid('argument', token, 'unexpected positional argument');
    const body = token.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const rawName = eq === -1 ? body : body.slice(0, eq);
    const spec = byName.get(rawName);
    if (spec === undefined) throw invalid('flag', token, 'unknown flag (see --help)');
    if (seen.has(spec.name)) throw invalid(`--${spec.name}`, token, 'given more than once');
    seen.add(spec.name);
    i++;
    const vals: string[] = [];
    if (eq !== -1) {
      if (spec.kind === 'bool') throw invalid(`--${spec.name}`, token, 'takes no value');
      vals.push(body.slice(eq + 1));
    } else if (spec.kind !== 'bool') {
      while (i < argv.length && !(argv[i].startsWith('--') || /^-[a-z]$/i.test(argv[i]))) {
        vals.push(argv[i]);
        i++;
        if (spec.kind === 'string' || spec.kind === 'int') break;
      }
      if (vals.length === 0) throw invalid(`--${spec.name}`, '', 'needs a value');
    }
    values.set(spec.name, vals);
  }

  const str = (n: string): string | undefined => values.get(n)?.[0];
  const num = (n: string): number | undefined => {
    const v = str(n);
    return v === undefined ? undefined : parseIntFlag(n, v);
  };
  const has = (n: string): boolean => values.has(n);

  const pairs = (hostsFlag: string, portsFlag: string, defaultPort: number): string[] => {
    const hosts = values.get(hostsFlag) ?? ['localhost'];
    const ports = (values.get(portsFlag) ?? [String(defaultPort)]).map((p) => parseIntFlag(portsFlag, p));
    if (hosts.length !== ports.length) {
      throw new MooncakeError(
        'INVALID_CONFIG',
        `--${hostsFlag} has ${hosts.length} value(s) (${hosts.join(' ')}) but --${portsFlag} has ${ports.length} (${ports.join(' ')}); give one port per host`,
        { details: { option: `--${portsFlag}`, value: ports } },
      );
    }
    return hosts.map((h, k) => {
      const p = ports[k];
      if (p < 1 || p > 65535) throw invalid(`--${portsFlag}`, p, 'expected a port from 1 to 65535');
      if (h === '' || /[\s/]/.test(h)) throw invalid(`--${hostsFlag}`, h, 'expected a host name or address');
      return hostPortToUrl(h, p);
    });
  };

  const logLevel = str('log-level') ?? 'info';
  if (!['debug', 'info', 'warn', 'error', 'silent'].includes(logLevel)) {
    throw invalid('--log-level', logLevel, 'expected debug, info, warn, error or silent');
  }
  const asPolicy = (flag: string): PolicyName | undefined => {
    const v = str(flag);
    if (v === undefined) return undefined;
    return policy(`--${flag}`, v, 'round-robin');
  };

  const options: ProxyOptions = {
    host: str('host'),
    port: num('port') ?? DEFAULT_PROXY_PORT,
    prefill: pairs('prefiller-hosts', 'prefiller-ports', DEFAULT_PREFILLER_PORT),
    decode: pairs('decoder-hosts', 'decoder-ports', DEFAULT_DECODER_PORT),
    policy: asPolicy('policy'),
    prefillPolicy: asPolicy('prefiller-policy'),
    decodePolicy: asPolicy('decoder-policy'),
    healthCheck: {
      enabled: !has('no-health-check'),
      path: str('health-path'),
      intervalMs: num('health-interval-ms'),
      timeoutMs: num('health-timeout-ms'),
      unhealthyThreshold: num('unhealthy-threshold'),
      healthyThreshold: num('healthy-threshold'),
    },
    retries: { maxRetries: num('max-retries'), baseDelayMs: num('retry-delay-ms') },
    timeouts: { connectMs: num('connect-timeout-ms'), prefillMs: num('prefill-timeout-ms'), decodeIdleMs: num('decode-timeout-ms') },
    apiKey: str('api-key') ?? (env.OPENAI_API_KEY !== undefined && env.OPENAI_API_KEY !== '' ? env.OPENAI_API_KEY : undefined),
    admin: !has('no-admin'),
    adminToken: str('admin-token'),
    maxBodyBytes: num('max-body-bytes'),
    shutdownGraceMs: num('shutdown-grace-ms'),
  };
  // Validate everything now so a bad flag fails before anything listens; the messages name the option.
  try {
    resolveProxyOptions(options);
  } catch (e) {
    if (e instanceof MooncakeError) throw renameToFlag(e);
    throw e;
  }
  return { help: has('help'), logLevel: logLevel as ProxyLogLevel | 'silent', options };
}

const OPTION_TO_FLAG: Record<string, string> = {
  port: '--port',
  host: '--host',
  policy: '--policy',
  prefillPolicy: '--prefiller-policy',
  decodePolicy: '--decoder-policy',
  'healthCheck.path': '--health-path',
  'healthCheck.intervalMs': '--health-interval-ms',
  'healthCheck.timeoutMs': '--health-timeout-ms',
  'healthCheck.unhealthyThreshold': '--unhealthy-threshold',
  'healthCheck.healthyThreshold': '--healthy-threshold',
  'retries.maxRetries': '--max-retries',
  'retries.baseDelayMs': '--retry-delay-ms',
  'timeouts.connectMs': '--connect-timeout-ms',
  'timeouts.prefillMs': '--prefill-timeout-ms',
  'timeouts.decodeIdleMs': '--decode-timeout-ms',
  apiKey: '--api-key',
  adminToken: '--admin-token',
  maxBodyBytes: '--max-body-bytes',
  shutdownGraceMs: '--shutdown-grace-ms',
};

function renameToFlag(e: MooncakeError): MooncakeError {
  const option = typeof e.details?.option === 'string' ? e.details.option : undefined;
  const flag = option === undefined ? undefined : OPTION_TO_FLAG[option];
  if (flag === undefined || option === undefined) return e;
  return new MooncakeError('INVALID_CONFIG', flag + e.message.slice(option.length), { cause: e, details: { ...e.details, option: flag } });
}
