// `mooncake-node metadata-server --data-dir`: an entry acknowledged with 200 survives a SIGKILL of the
// server process; the restarted server (same port) answers it, and engines need not republish.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { HttpMetadataStore } from '../../lib/metadata/http-store';
import { stopProcess, watchdog } from '../helpers/server-process';
import { repoRoot } from '../helpers/upstream';

const cli = path.join(repoRoot, 'dist', 'cli.js');
const ready = fs.existsSync(cli);
if (!ready) console.warn('\n[server-crash] SKIPPING: dist/cli.js is missing; build with `npx tsc -p tsconfig.json`\n');

const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => stopProcess(c, 1000)));
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

async function serve(args: string[]): Promise<{ child: ChildProcess; port: number; out: () => string }> {
  const child = spawn(process.execPath, [cli, 'metadata-server', '--host', '127.0.0.1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  watchdog(child);
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && child.exitCode === null) {
    const port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)\/metadata/.exec(out)?.[1]);
    if (port) return { child, port, out: () => out };
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`metadata-server did not start:\n${out}`);
}

describe.skipIf(!ready)('metadata-server --data-dir after a crash', () => {
  test('acknowledged entries survive SIGKILL; a restart on the same port serves them', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-meta-crash-'));
    dirs.push(dataDir);
    const first = await serve(['--port', '0', '--data-dir', dataDir]);
    const url = `http://127.0.0.1:${first.port}/metadata`;
    const store = new HttpMetadataStore(url, { timeoutMs: 2000 });
    try {
      const rpc = '{"ip_or_host_name":"127.0.0.1","rpc_port":15001}';
      await store.set('mooncake/rpc_meta/crash-a', rpc);
      await store.set('mooncake/ram/crash-a', '{"name":"crash-a","buffers":[]}');
      await store.set('mooncake/ram/deleted', '{}');
      expect(await store.remove('mooncake/ram/deleted')).toBe(true);
      first.child.kill('SIGKILL');
      await new Promise((r) => first.child.once('exit', r));

      const second = await serve(['--port', String(first.port), '--data-dir', dataDir]);
      expect(second.out()).toMatch(/loaded 2 entries/);
      expect(await store.get('mooncake/rpc_meta/crash-a')).toBe(rpc);
      expect(await store.get('mooncake/ram/crash-a')).toBe('{"name":"crash-a","buffers":[]}');
      expect(await store.get('mooncake/ram/deleted')).toBeUndefined();
      // The restarted server still treats the persisted rpc_meta as taken (identical re-PUT is fine).
      await store.set('mooncake/rpc_meta/crash-a', rpc);
      await expect(store.set('mooncake/rpc_meta/crash-a', '{"other":1}')).rejects.toMatchObject({ code: 'METADATA', details: { status: 400 } });
    } finally {
      await store.close();
    }
  });
});
