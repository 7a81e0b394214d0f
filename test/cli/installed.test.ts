// The commands from an installed package: `bench --compare`'s set-up script ships and `mooncake-node
// setup-upstream` runs it (the venv goes where an installed package can keep it); `proxy-bench` names the
// optional package it needs; and the servers' bind defaults are the same everywhere.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_BIND_HOST, DEFAULT_METADATA_SERVER_PORT, DEFAULT_PROXY_PORT } from '../../lib/util/defaults';
import { MetadataServer } from '../../lib/metadata';
import { runMetadataServerCommand } from '../../lib/metadata/command';
import { createProxy, parseProxyArgs, resolveProxyOptions, runProxyCommand } from '../../lib/proxy';
import { defaultUpstreamVenv } from '../../lib/tools/upstream-peer';
import { runCli } from '../helpers/cli';
import { repoRoot } from '../helpers/upstream';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-setup-upstream-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('setup-upstream', () => {
  it('the package ships the set-up script', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
    const files = (JSON.parse(r.stdout) as { files: { path: string; mode: number }[] }[])[0].files;
    const script = files.find((f) => f.path === 'scripts/setup-upstream-peer.sh');
    expect(script).toBeDefined();
  }, 130_000);

  it('puts the venv in the checkout, in $MOONCAKE_UPSTREAM_VENV, or (installed) in the user cache', () => {
    const checkout = path.join(tmp, 'checkout');
    fs.mkdirSync(path.join(checkout, '.git'), { recursive: true });
    expect(defaultUpstreamVenv(checkout, {})).toBe(path.join(checkout, '.venv-upstream'));
    const installed = path.join(tmp, 'node_modules', 'mooncake-node');
    fs.mkdirSync(installed, { recursive: true });
    expect(defaultUpstreamVenv(installed, { XDG_CACHE_HOME: '/c' })).toBe('/c/mooncake-node/venv-upstream');
    expect(defaultUpstreamVenv(installed, { HOME: os.homedir() })).toBe(path.join(os.homedir(), '.cache', 'mooncake-node', 'venv-upstream'));
    expect(defaultUpstreamVenv(installed, { MOONCAKE_UPSTREAM_VENV: 'rel/venv' })).toBe(path.resolve('rel/venv'));
  });

  it('names what is missing in one coded line when the script is not there', async () => {
    const pkg = path.join(tmp, 'no-script');
    fs.mkdirSync(pkg);
    fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
    const r = await runCli(['setup-upstream'], { cli: path.join(pkg, 'dist', 'cli.js'), timeoutMs: 30_000 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^mooncake-node: \[LIBRARY_NOT_FOUND\] .*scripts\/setup-upstream-peer\.sh is missing/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

/** dist/ and package.json alone: an installed package whose optional dependencies are not there. */
function bareCopy(name: string): string {
  const pkg = path.join(tmp, name);
  fs.mkdirSync(pkg);
  fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
  fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
  return path.join(pkg, 'dist', 'cli.js');
}

describe('proxy-bench from an installed package', () => {
  it('says which optional package to install, in one coded line', async () => {
    const r = await runCli(['proxy-bench', '--duration', '1'], { cli: bareCopy('no-autocannon'), cwd: tmp, timeoutMs: 30_000 });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual(["mooncake-node: [MISSING_DEPENDENCY] mooncake-node proxy-bench (the load generator) needs the optional package 'autocannon': npm install autocannon"]);
  });
});

describe('bind defaults', () => {
  it('every server binds 127.0.0.1; the commands use 8080 and 8000, the programmatic servers a free port', async () => {
    expect(DEFAULT_BIND_HOST).toBe('127.0.0.1');
    expect(resolveProxyOptions(parseProxyArgs([]).options)).toMatchObject({ host: DEFAULT_BIND_HOST, port: DEFAULT_PROXY_PORT });
    expect(DEFAULT_PROXY_PORT).toBe(8000);
    expect(DEFAULT_METADATA_SERVER_PORT).toBe(8080);
    expect(resolveProxyOptions({})).toMatchObject({ host: '127.0.0.1', port: 0 });

    const meta = new MetadataServer({ logger: null });
    const info = await meta.listen();
    expect(info.host).toBe('127.0.0.1');
    expect(info.port).not.toBe(8080);
    await meta.close();
    const proxy = createProxy({ healthCheck: { enabled: false } });
    const addr = await proxy.listen();
    expect(addr.host).toBe('127.0.0.1');
    expect(addr.port).not.toBe(8000);
    await proxy.close();

    // The commands, given only a free port, bind loopback and say so.
    const out: string[] = [];
    const ac = new AbortController();
    await runMetadataServerCommand(['--port', '0'], {
      signal: ac.signal,
      stdout: (l) => out.push(l),
      handleSignals: false,
      onListening: (i) => {
        expect(i.host).toBe('127.0.0.1');
        ac.abort();
      },
    });
    expect(out.join('\n')).toMatch(/loopback only: --host 0\.0\.0\.0 serves other machines/);
    const ac2 = new AbortController();
    let proxyHost = '';
    await runProxyCommand(['--port', '0', '--log-level', 'silent', '--no-health-check'], {
      signal: ac2.signal,
      handleSignals: false,
      stdout: { write: () => true } as unknown as NodeJS.WritableStream,
      onListening: (a) => {
        proxyHost = a.host;
        ac2.abort();
      },
    });
    expect(proxyHost).toBe('127.0.0.1');
  });
});
