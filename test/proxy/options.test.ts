import { describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib/errors';
import { createProxy, normalizeInstanceUrl, parseProxyArgs, resolveProxyOptions } from '../../lib/proxy';

function configError(fn: () => unknown): MooncakeError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(MooncakeError);
    expect((e as MooncakeError).code).toBe('INVALID_CONFIG');
    return e as MooncakeError;
  }
  throw new Error('expected INVALID_CONFIG');
}

describe('parseProxyArgs', () => {
  it("reads the guide's run_proxy.sh flags with the same meaning", () => {
    const argv = '--host localhost --prefiller-hosts localhost host1 --prefiller-ports 8100 8101 --decoder-hosts localhost host2 --decoder-ports 8200 8201'.split(' ');
    const { options, help } = parseProxyArgs(argv);
    expect(help).toBe(false);
    expect(options.host).toBe('localhost');
    expect(options.port).toBe(8000);
    expect(options.prefill).toEqual(['http://localhost:8100', 'http://host1:8101']);
    expect(options.decode).toEqual(['http://localhost:8200', 'http://host2:8201']);
  });

  it("defaults like vllm-ascend's toy proxy: localhost:8100 prefill, localhost:8200 decode, port 8000", () => {
    const { options } = parseProxyArgs([]);
    expect(options.prefill).toEqual(['http://localhost:8100']);
    expect(options.decode).toEqual(['http://localhost:8200']);
    expect(options.port).toBe(8000);
    expect(resolveProxyOptions(options).host).toBe('127.0.0.1');
  });

  it('accepts singular aliases, --flag=value, IPv6 hosts and the tuning flags', () => {
    const { options, logLevel } = parseProxyArgs([
      '--port=9000',
      '--prefiller-host',
      '::1',
      '--prefiller-port',
      '7100',
      '--decoder-hosts=10.0.0.2',
      '--decoder-ports=7200',
      '--policy',
      'least-tokens',
      '--decoder-policy',
      'least-requests',
      '--max-retries',
      '5',
      '--health-interval-ms',
      '250',
      '--no-health-check',
      '--prefill-timeout-ms',
      '1234',
      '--admin-token',
      'tok',
      '--log-level',
      'warn',
    ]);
    expect(logLevel).toBe('warn');
    const r = resolveProxyOptions(options);
    expect(r.port).toBe(9000);
    expect(r.prefill).toEqual(['http://[::1]:7100']);
    expect(r.decode).toEqual(['http://10.0.0.2:7200']);
    expect(r.prefillPolicy).toBe('least-tokens');
    expect(r.decodePolicy).toBe('least-requests');
    expect(r.retries.maxRetries).toBe(5);
    expect(r.healthCheck).toMatchObject({ enabled: false, intervalMs: 250 });
    expect(r.timeouts.prefillMs).toBe(1234);
    expect(r.adminToken).toBe('tok');
  });

  it('takes the upstream api key from --api-key, else OPENAI_API_KEY', () => {
    expect(parseProxyArgs([], { OPENAI_API_KEY: 'sk-env' }).options.apiKey).toBe('sk-env');
    expect(parseProxyArgs(['--api-key', 'sk-flag'], { OPENAI_API_KEY: 'sk-env' }).options.apiKey).toBe('sk-flag');
    expect(parseProxyArgs([], {}).options.apiKey).toBeUndefined();
  });

  it('names the flag and value in every error', () => {
    expect(configError(() => parseProxyArgs(['--prefiller-hosts', 'a', 'b', '--prefiller-ports', '8100'])).message).toBe(
      '--prefiller-hosts has 2 value(s) (a b) but --prefiller-ports has 1 (8100); give one port per host',
    );
    expect(configError(() => parseProxyArgs(['--port', 'abc'])).message).toBe('--port="abc": expected an integer');
    expect(configError(() => parseProxyArgs(['--port', '70000'])).message).toBe('--port=70000: expected an integer from 0 to 65535');
    expect(configError(() => parseProxyArgs(['--decoder-ports', '0'])).message).toBe('--decoder-ports=0: expected a port from 1 to 65535');
    expect(configError(() => parseProxyArgs(['--policy', 'random'])).message).toMatch(/^--policy="random": expected one of round-robin/);
    expect(configError(() => parseProxyArgs(['--max-retries', '-1'])).message).toMatch(/^--max-retries=-1: expected an integer from 0/);
    expect(configError(() => parseProxyArgs(['--health-interval-ms', '0'])).message).toMatch(/^--health-interval-ms=0:/);
    expect(configError(() => parseProxyArgs(['--bogus'])).message).toBe("--bogus: unknown option for 'proxy' (see 'mooncake-node proxy --help')");
    expect(configError(() => parseProxyArgs(['--prefiller-prots', '1'])).message).toMatch(/^--prefiller-prots: unknown option for 'proxy'; did you mean --prefiller-ports\?/);
    expect(configError(() => parseProxyArgs(['--port'])).message).toMatch(/^--port: needs a value/);
    expect(configError(() => parseProxyArgs(['--port', '1', '--port', '2'])).message).toMatch(/^--port: given more than once/);
    expect(configError(() => parseProxyArgs(['stray'])).message).toMatch(/^"stray": unexpected argument/);
    expect(configError(() => parseProxyArgs(['--no-admin=yes'])).message).toMatch(/^--no-admin="yes": takes no value/);
    expect(configError(() => parseProxyArgs(['--stream'])).message).toMatch(/^--stream: unknown option/);
    expect(configError(() => parseProxyArgs(['--log-level', 'loud'])).message).toMatch(/^--log-level="loud"/);
    expect(configError(() => parseProxyArgs(['--health-path', 'health'])).message).toMatch(/^--health-path="health": expected a path/);
  });

  it("maps each vllm-ascend behaviour's switch, vllm-ascend's own flag spellings, and the layerwise mode", () => {
    const defaults = resolveProxyOptions(parseProxyArgs([]).options);
    expect(defaults).toMatchObject({
      mode: 'pull',
      prefillMinTokens: true,
      copyCachedTokens: true,
      authorization: 'api-key',
      resetPrefixCache: true,
      recompute: { enabled: true, maxRedispatches: 3 },
      retries: { maxRetries: 3, baseDelayMs: 1, onHttpError: true },
    });
    const { options, logLevel } = parseProxyArgs([
      '--mode', 'layerwise', '--metaserver-url', 'http://10.0.0.1:8000/v1/metaserver', '--no-retry-http-errors',
      '--no-prefill-min-tokens', '--no-cached-tokens', '--no-recompute', '--max-recomputes', '5',
      '--pass-client-authorization', '--no-reset-prefix-cache', '--retry-delay', '0.25', '--log-level', 'WARNING',
    ]);
    expect(logLevel).toBe('warn');
    expect(resolveProxyOptions(options)).toMatchObject({
      mode: 'layerwise',
      metaserverUrl: 'http://10.0.0.1:8000/v1/metaserver',
      prefillMinTokens: false,
      copyCachedTokens: false,
      authorization: 'client',
      resetPrefixCache: false,
      recompute: { enabled: false, maxRedispatches: 5 },
      retries: { baseDelayMs: 250, onHttpError: false },
    });
    expect(configError(() => parseProxyArgs(['--mode', 'scatter'])).message).toMatch(/^--mode="scatter": expected one of pull, layerwise, push/);
    expect(configError(() => parseProxyArgs(['--mode', 'layerwise', '--host', '0.0.0.0'])).message).toMatch(/^--host="0\.0\.0\.0": layerwise decode instances must reach/);
  });

  it('recognises --help', () => {
    expect(parseProxyArgs(['--help']).help).toBe(true);
    expect(parseProxyArgs(['-h']).help).toBe(true);
  });
});

describe('resolveProxyOptions and instance addresses', () => {
  it('normalises addresses to origins', () => {
    expect(normalizeInstanceUrl('127.0.0.1:8100')).toBe('http://127.0.0.1:8100');
    expect(normalizeInstanceUrl('http://Prefill-0:8100/')).toBe('http://prefill-0:8100');
    expect(normalizeInstanceUrl('[::1]:8200')).toBe('http://[::1]:8200');
    expect(normalizeInstanceUrl('http://host:80')).toBe('http://host');
  });

  it('refuses addresses it cannot route to, naming them', () => {
    expect(configError(() => resolveProxyOptions({ prefill: ['127.0.0.1'] })).message).toBe('prefill[0]="127.0.0.1": a port is required');
    expect(configError(() => resolveProxyOptions({ decode: ['https://a:1'] })).message).toMatch(/^decode\[0\]="https:\/\/a:1": only http/);
    expect(configError(() => resolveProxyOptions({ decode: ['http://a:1/v1'] })).message).toMatch(/without a path/);
    expect(configError(() => resolveProxyOptions({ decode: ['a:1', 'http://a:1'] })).message).toBe('decode[1]="http://a:1": listed twice');
    expect(configError(() => resolveProxyOptions({ port: -1 })).message).toMatch(/^port=-1/);
    expect(configError(() => resolveProxyOptions({ retries: { maxRetries: 1.5 } })).message).toMatch(/^retries.maxRetries=1.5/);
    expect(configError(() => resolveProxyOptions({ apiKey: '' })).message).toMatch(/^apiKey="<redacted>"/);
  });

  it('createProxy validates before anything listens', () => {
    expect(configError(() => createProxy({ decode: ['nope'] })).message).toMatch(/^decode\[0\]="nope"/);
  });

  it('reports a busy port when listening', async () => {
    const first = createProxy({ port: 0, healthCheck: { enabled: false } });
    const { port } = await first.listen();
    const second = createProxy({ port, healthCheck: { enabled: false } });
    try {
      await expect(second.listen()).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: expect.stringMatching(/cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/) });
    } finally {
      await second.close();
      await first.close();
      await first.close(); // idempotent
    }
    expect(first.address()).toBeUndefined();
    await expect(first.listen()).rejects.toMatchObject({ code: 'CLOSED' });
  });
});
