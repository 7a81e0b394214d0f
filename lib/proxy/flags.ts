/**
 * `mooncake-node proxy` flags: vllm-ascend's proxy flags (`--host --port --prefiller-hosts ... --prefiller-ports
 * ... --decoder-hosts ... --decoder-ports ...`, space-separated lists, `--max-retries`, `--retry-delay` in seconds,
 * `--log-level`) plus mooncake-node's own, mapped onto ProxyOptions.
 */
import { parseFlags, type FlagValues } from '../cli/flags';
import { DEFAULT_BIND_HOST, DEFAULT_PROXY_PORT } from '../util/defaults';
import { MooncakeError, describeValue } from '../errors';
import {
  DEFAULT_DECODER_PORT,
  DEFAULT_PREFILLER_PORT,
  POLICY_NAMES,
  PROXY_MODES,
  hostPortToUrl,
  resolveProxyOptions,
  type PolicyName,
  type ProxyLogLevel,
  type ProxyMode,
  type ProxyOptions,
} from './options';

const policies = POLICY_NAMES as readonly string[];

export const PROXY_FLAGS = {
  host: { type: 'string', default: DEFAULT_BIND_HOST, arg: 'H', help: 'listen address; 0.0.0.0 serves other machines' },
  port: { type: 'int', min: 0, max: 65535, default: DEFAULT_PROXY_PORT, arg: 'P', help: 'listen port' },
  'prefiller-hosts': { type: 'list', aliases: ['prefiller-host'], arg: 'H', defaultText: 'localhost', help: 'prefill hosts, space-separated' },
  'prefiller-ports': { type: 'list', aliases: ['prefiller-port'], arg: 'P', defaultText: String(DEFAULT_PREFILLER_PORT), help: 'prefill ports, one per host, same order' },
  'decoder-hosts': { type: 'list', aliases: ['decoder-host'], arg: 'H', defaultText: 'localhost', help: 'decode hosts' },
  'decoder-ports': { type: 'list', aliases: ['decoder-port'], arg: 'P', defaultText: String(DEFAULT_DECODER_PORT), help: 'decode ports, one per host' },
  mode: { type: 'string', choices: PROXY_MODES, default: 'pull', help: "pull: prefill, then decode (MooncakeConnectorV1); layerwise: decode first, prefill through /v1/metaserver; push: both at once with one transfer_id (vLLM's MooncakeConnector)" },
  'bootstrap-ports': { type: 'list', aliases: ['bootstrap-port'], arg: 'P', defaultText: '8998', help: "push: each prefill instance's bootstrap server port (one for all, or one per host)" },
  'metaserver-url': { type: 'string', arg: 'URL', defaultText: 'http://<host>:<port>/v1/metaserver', help: 'layerwise: where decode instances reach this proxy' },
  policy: { type: 'string', choices: policies, default: 'round-robin', help: 'instance choice for both roles' },
  'prefiller-policy': { type: 'string', choices: policies, arg: 'NAME', help: 'policy for prefill instances only' },
  'decoder-policy': { type: 'string', choices: policies, arg: 'NAME', help: 'policy for decode instances only' },
  'max-retries': { type: 'int', min: 0, max: 100, default: 3, help: 'retries after a failure, on another instance' },
  'retry-delay': { type: 'number', min: 0, max: 60, arg: 'S', defaultText: '0.001', help: "first retry delay in seconds, doubled each time (vllm-ascend's flag)" },
  'retry-delay-ms': { type: 'int', min: 0, max: 60_000, hidden: true, help: 'first retry delay in milliseconds' },
  'retry-http-errors': { type: 'boolean', negatable: true, default: true, help: 'retry connection failures only, never an HTTP error status' },
  'prefill-min-tokens': { type: 'boolean', negatable: true, default: true, help: 'send min_tokens: 1 to prefill only when the client set min_tokens' },
  'cached-tokens': { type: 'boolean', negatable: true, default: true, help: "do not copy prefill's cached_tokens into decode's usage" },
  recompute: { type: 'boolean', negatable: true, default: true, help: 'pass a decode answer with stop_reason "recomputed" through instead of re-dispatching' },
  'max-recomputes': { type: 'int', min: 0, max: 100, default: 3, help: 're-dispatches per request after "recomputed"' },
  'health-path': { type: 'string', default: '/health', arg: 'PATH', help: 'health probe path' },
  'health-interval-ms': { type: 'int', min: 1, default: 5000, help: 'time between probe rounds' },
  'health-timeout-ms': { type: 'int', min: 1, default: 2000, help: 'probe timeout' },
  'unhealthy-threshold': { type: 'int', min: 1, default: 3, help: 'consecutive failures that eject an instance' },
  'healthy-threshold': { type: 'int', min: 1, default: 2, help: 'consecutive good probes that bring it back' },
  'health-check': { type: 'boolean', negatable: true, default: true, help: 'never probe nor eject' },
  'connect-timeout-ms': { type: 'int', min: 1, default: 5000, help: 'upstream connect timeout' },
  'prefill-timeout-ms': { type: 'int', min: 1, default: 300000, help: 'whole prefill request timeout' },
  'decode-timeout-ms': { type: 'int', min: 1, default: 300000, help: 'longest silence from a decode instance' },
  'api-key': { type: 'string', arg: 'KEY', defaultText: '$OPENAI_API_KEY', help: 'sent upstream as Authorization: Bearer KEY' },
  'pass-client-authorization': { type: 'boolean', help: "send the client's Authorization upstream, the key only when the client sent none" },
  'admin-token': { type: 'string', arg: 'TOKEN', help: 'require this bearer token on /admin/instances and /reset_prefix_cache' },
  admin: { type: 'boolean', negatable: true, default: true, help: 'do not serve /admin/instances' },
  'reset-prefix-cache': { type: 'boolean', negatable: true, default: true, help: 'do not serve /reset_prefix_cache' },
  'max-body-bytes': { type: 'int', min: 1, default: 33554432, help: 'largest accepted request body' },
  'shutdown-grace-ms': { type: 'int', min: 0, default: 10000, help: 'time in-flight requests get on SIGINT/SIGTERM' },
  'log-level': { type: 'string', choices: ['debug', 'info', 'warn', 'error', 'silent', 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'], default: 'info', arg: 'LEVEL', help: 'debug | info | warn | error | silent (vllm-ascend spellings too)' },
} as const;

export interface ProxyCommandOptions {
  help: boolean;
  logLevel: ProxyLogLevel | 'silent';
  options: ProxyOptions;
}

function port(flag: string, text: string): number {
  if (!/^\d+$/.test(text)) throw new MooncakeError('INVALID_CONFIG', `--${flag}=${describeValue(text)}: expected an integer`, { details: { flag: `--${flag}`, value: text } });
  const p = Number(text);
  if (p < 1 || p > 65535) throw new MooncakeError('INVALID_CONFIG', `--${flag}=${p}: expected a port from 1 to 65535`, { details: { flag: `--${flag}`, value: p } });
  return p;
}

/** Hosts and ports pair up by position; the two lists must have the same length. */
function pairs(v: FlagValues<typeof PROXY_FLAGS>, hostsFlag: 'prefiller-hosts' | 'decoder-hosts', portsFlag: 'prefiller-ports' | 'decoder-ports', defaultPort: number): string[] {
  const hosts = v[hostsFlag] ?? ['localhost'];
  const ports = (v[portsFlag] ?? [String(defaultPort)]).map((p) => port(portsFlag, p));
  if (hosts.length !== ports.length) {
    throw new MooncakeError(
      'INVALID_CONFIG',
      `--${hostsFlag} has ${hosts.length} value(s) (${hosts.join(' ')}) but --${portsFlag} has ${ports.length} (${ports.join(' ')}); give one port per host`,
      { details: { flag: `--${portsFlag}`, value: ports } },
    );
  }
  return hosts.map((h, k) => {
    if (h === '' || /[\s/]/.test(h)) throw new MooncakeError('INVALID_CONFIG', `--${hostsFlag}=${describeValue(h)}: expected a host name or address`);
    return hostPortToUrl(h, ports[k]);
  });
}

const LOG_LEVELS: Record<string, ProxyLogLevel | 'silent'> = { WARNING: 'warn', CRITICAL: 'error', DEBUG: 'debug', INFO: 'info', ERROR: 'error' };

/** ProxyOptions from parsed flags; `env` supplies OPENAI_API_KEY. Every value is validated before anything listens. */
export function proxyOptionsFromFlags(v: FlagValues<typeof PROXY_FLAGS>, env: Readonly<Record<string, string | undefined>> = {}): { logLevel: ProxyLogLevel | 'silent'; options: ProxyOptions } {
  const retryDelayMs = v['retry-delay-ms'] ?? (v['retry-delay'] !== undefined ? Math.round(v['retry-delay'] * 1000) : undefined);
  const prefill = pairs(v, 'prefiller-hosts', 'prefiller-ports', DEFAULT_PREFILLER_PORT);
  const bootstrap = (v['bootstrap-ports'] ?? []).map((p) => port('bootstrap-ports', p));
  if (bootstrap.length > 1 && bootstrap.length !== prefill.length) {
    throw new MooncakeError('INVALID_CONFIG', `--bootstrap-ports has ${bootstrap.length} values but there are ${prefill.length} prefill instances; give one port for all or one per host`, {
      details: { flag: '--bootstrap-ports', value: bootstrap },
    });
  }
  const options: ProxyOptions = {
    host: v.host,
    port: v.port,
    mode: v.mode as ProxyMode,
    metaserverUrl: v['metaserver-url'],
    ...(bootstrap.length === 1 ? { bootstrapPort: bootstrap[0] } : {}),
    ...(bootstrap.length > 1 ? { bootstrapPorts: Object.fromEntries(prefill.map((url, k) => [url, bootstrap[k]])) } : {}),
    prefill,
    decode: pairs(v, 'decoder-hosts', 'decoder-ports', DEFAULT_DECODER_PORT),
    policy: v.policy as PolicyName,
    prefillPolicy: v['prefiller-policy'] as PolicyName | undefined,
    decodePolicy: v['decoder-policy'] as PolicyName | undefined,
    healthCheck: {
      enabled: v['health-check'],
      path: v['health-path'],
      intervalMs: v['health-interval-ms'],
      timeoutMs: v['health-timeout-ms'],
      unhealthyThreshold: v['unhealthy-threshold'],
      healthyThreshold: v['healthy-threshold'],
    },
    retries: { maxRetries: v['max-retries'], baseDelayMs: retryDelayMs, onHttpError: v['retry-http-errors'] },
    timeouts: { connectMs: v['connect-timeout-ms'], prefillMs: v['prefill-timeout-ms'], decodeIdleMs: v['decode-timeout-ms'] },
    apiKey: v['api-key'] ?? (env.OPENAI_API_KEY !== undefined && env.OPENAI_API_KEY !== '' ? env.OPENAI_API_KEY : undefined),
    authorization: v['pass-client-authorization'] === true ? 'client' : 'api-key',
    prefillMinTokens: v['prefill-min-tokens'],
    copyCachedTokens: v['cached-tokens'],
    recompute: { enabled: v.recompute, maxRedispatches: v['max-recomputes'] },
    resetPrefixCache: v['reset-prefix-cache'],
    admin: v.admin,
    adminToken: v['admin-token'],
    maxBodyBytes: v['max-body-bytes'],
    shutdownGraceMs: v['shutdown-grace-ms'],
  };
  try {
    resolveProxyOptions(options);
  } catch (e) {
    throw e instanceof MooncakeError ? renameToFlag(e) : e;
  }
  const level = v['log-level'] ?? 'info';
  return { logLevel: LOG_LEVELS[level] ?? (level as ProxyLogLevel | 'silent'), options };
}

/**
 * Parses the proxy's flags (as `mooncake-node proxy` would). Lists are space-separated
 * (`--prefiller-hosts a b --prefiller-ports 8100 8101`); `--flag=value` also works.
 */
export function parseProxyArgs(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = {}): ProxyCommandOptions {
  const { values } = parseFlags({ ...PROXY_FLAGS, help: { type: 'boolean', short: 'h', help: '' } }, argv, { command: 'proxy' });
  const { help, ...rest } = values;
  return { help: help === true, ...proxyOptionsFromFlags(rest, env) };
}

const OPTION_TO_FLAG: Record<string, string> = {
  port: '--port',
  host: '--host',
  mode: '--mode',
  bootstrapPort: '--bootstrap-ports',
  metaserverUrl: '--metaserver-url',
  policy: '--policy',
  prefillPolicy: '--prefiller-policy',
  decodePolicy: '--decoder-policy',
  'healthCheck.path': '--health-path',
  'healthCheck.intervalMs': '--health-interval-ms',
  'healthCheck.timeoutMs': '--health-timeout-ms',
  'healthCheck.unhealthyThreshold': '--unhealthy-threshold',
  'healthCheck.healthyThreshold': '--healthy-threshold',
  'retries.maxRetries': '--max-retries',
  'retries.baseDelayMs': '--retry-delay',
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
