import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { METADATA_SERVER_USAGE, runMetadataServerCommand } from '../../lib/metadata/command';
import type { ListenInfo } from '../../lib/metadata/server';
import { escapeKeyForUrl } from '../../lib/metadata/keys';
import { rawRequest } from '../helpers/raw-http';
import { stopProcess } from '../helpers/server-process';
import { repoRoot } from '../helpers/upstream';

const k = (key: string): string => `/metadata?key=${escapeKeyForUrl(key)}`;
const dirs: string[] = [];
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-metadata-cli-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('runMetadataServerCommand (in process)', () => {
  test('serves until aborted, then closes; flags are applied', async () => {
    const dataDir = tempDir();
    const out: string[] = [];
    const ac = new AbortController();
    let info: ListenInfo | undefined;
    const listening = new Promise<ListenInfo>((resolve) => {
      void runMetadataServerCommand(['--port', '0', '--host', '127.0.0.1', '--data-dir', dataDir, '--ttl-ms', '60000', '--max-value-bytes=5'], {
        signal: ac.signal,
        stdout: (l) => out.push(l),
        stderr: (l) => out.push(l),
        onListening: (i) => {
          info = i;
          resolve(i);
        },
      }).then(() => out.push('<done>'));
    });
    const { port, url } = await listening;
    expect(url).toBe(`http://127.0.0.1:${port}/metadata`);
    expect(out.join('\n')).toMatch(new RegExp(`listening on http://127\\.0\\.0\\.1:${port}/metadata \\(data in .*metadata\\.json, TTL 60000 ms\\)`));
    expect((await rawRequest(port, 'PUT', k('a'), '12345')).status).toBe(200);
    expect((await rawRequest(port, 'PUT', k('b'), '123456')).status).toBe(413);
    ac.abort();
    const deadline = Date.now() + 5000;
    while (!out.includes('<done>') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(out).toContain('<done>');
    expect(info).toBeDefined();
    await expect(rawRequest(port, 'GET', '/health', undefined, {}, 2000)).rejects.toThrow(/ECONNREFUSED/);
    expect(fs.readFileSync(path.join(dataDir, 'metadata.json'), 'utf8')).toMatch(/"key":"a"/);
  });

  test('--access-log prints one line per request', async () => {
    const out: string[] = [];
    const ac = new AbortController();
    let port = 0;
    const run = runMetadataServerCommand(['--port', '0', '--host', '127.0.0.1', '--access-log'], {
      signal: ac.signal,
      stdout: (l) => out.push(l),
      onListening: (i) => (port = i.port),
    });
    const deadline = Date.now() + 5000;
    while (port === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await rawRequest(port, 'GET', k('mooncake/ram/x'));
    ac.abort();
    await run;
    expect(out.some((l) => /^\d{4}-\d\d-\d\dT\S+ GET "mooncake\/ram\/x" 404 18$/.test(l))).toBe(true);
  });

  test('removes its signal listeners when done', async () => {
    const before = [process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')];
    const ac = new AbortController();
    const run = runMetadataServerCommand(['--port', '0', '--host', '127.0.0.1'], {
      signal: ac.signal,
      stdout: () => undefined,
      onListening: () => ac.abort(),
    });
    await run;
    expect([process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')]).toEqual(before);
  });

  test('--help prints the usage; bad arguments are INVALID_CONFIG with the usage', async () => {
    const out: string[] = [];
    await runMetadataServerCommand(['--help'], { stdout: (l) => out.push(l) });
    expect(out.join('\n')).toBe(METADATA_SERVER_USAGE);
    await expect(runMetadataServerCommand(['--port', 'x'])).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: '--port="x": expected an integer' });
    await expect(runMetadataServerCommand(['--port', '70000'])).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
    // One line naming the flag, no usage dump.
    await expect(runMetadataServerCommand(['--bogus'])).rejects.toMatchObject({ code: 'INVALID_CONFIG', message: "--bogus: unknown option for 'metadata-server' (see 'mooncake-node metadata-server --help')" });
    await expect(runMetadataServerCommand(['--ttl-ms', '-5'])).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });

  test('a busy port rejects with a clear message', async () => {
    const ac = new AbortController();
    let port = 0;
    const first = runMetadataServerCommand(['--port', '0', '--host', '127.0.0.1'], { signal: ac.signal, stdout: () => undefined, onListening: (i) => (port = i.port) });
    const deadline = Date.now() + 5000;
    while (port === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await expect(runMetadataServerCommand(['--port', String(port), '--host', '127.0.0.1'], { stdout: () => undefined })).rejects.toThrow(/already in use/);
    ac.abort();
    await first;
  });
});

/**
 * The real thing: a separate Node process running the command, stopped by SIGTERM / SIGINT. The lib is
 * compiled with the repository's TypeScript into a temp directory (no dist/ needed).
 */
describe('runMetadataServerCommand (child process, real signals)', () => {
  let runner: string;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    const outDir = tempDir();
    const tsc = path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
    await promisify(execFile)(
      process.execPath,
      [tsc, '--outDir', outDir, '--rootDir', path.join(repoRoot, 'lib'), '--module', 'commonjs', '--target', 'ES2022', '--strict', '--esModuleInterop', '--skipLibCheck', '--types', 'node', path.join(repoRoot, 'lib/metadata/command.ts')],
      { cwd: repoRoot, timeout: 120_000 },
    );
    runner = path.join(outDir, 'runner.js');
    fs.writeFileSync(
      runner,
      `require(${JSON.stringify(path.join(outDir, 'metadata', 'command.js'))}).runMetadataServerCommand(process.argv.slice(2))` +
        `.then(() => console.log('<clean exit>'), (e) => { console.error(e.message); process.exitCode = 2; });\n`,
    );
  }, 120_000);
  afterEach(async () => {
    await Promise.all(children.splice(0).map((c) => stopProcess(c, 1000)));
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    test(`${signal} closes the server and the process exits 0`, async () => {
      const dataDir = tempDir();
      const child = spawn(process.execPath, [runner, '--port', '0', '--host', '127.0.0.1', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const deadline = Date.now() + 15_000;
      let port: number | undefined;
      while (port === undefined && Date.now() < deadline && child.exitCode === null) {
        port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)\/metadata/.exec(out)?.[1]) || undefined;
        if (port === undefined) await new Promise((r) => setTimeout(r, 20));
      }
      expect(port, out).toBeDefined();
      expect((await rawRequest(port!, 'PUT', k('mooncake/ram/x'), '{"x":1}')).status).toBe(200);
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill(signal);
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 10_000))]);
      expect(code, out).toBe(0);
      expect(out).toContain(`${signal}, shutting down`);
      expect(out).toContain('<clean exit>');
      expect(fs.readFileSync(path.join(dataDir, 'metadata.json'), 'utf8')).toContain('mooncake/ram/x');
    });
  }
});
