/**
 * Real redis servers for tests: Debian's `redis-server` package, installed by
 * scripts/setup-metadata-servers.sh.
 *
 * `startRedis()` runs `redis-server` on 127.0.0.1 and a free port, without persistence (a restart
 * loses everything, like a cache node that was replaced), its working directory in a temp dir; with
 * `password` it requires AUTH, with `users` it adds ACL users. The server can be killed, stopped,
 * paused (SIGSTOP: accepts connections, never answers) and restarted on the same port.
 *
 * Every process started here is also SIGKILLed when the test worker exits, even if a test forgot it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { METADATA_SERVERS_SETUP } from './etcd';
import { controls, freePort, OutputTail, retryPortRace, track, waitServing, type ProcessControls } from './server-process';

/** The redis-server binary, or why there is none. */
export function redisBinary(): { binary: string; version: string } | { skipReason: string } {
  const candidate = process.env.REDIS_SERVER_BIN || 'redis-server';
  const r = spawnSync(candidate, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) {
    return { skipReason: `redis-server (${candidate}) is not installed or does not run: install Debian's redis-server with ${METADATA_SERVERS_SETUP} (as root)` };
  }
  return { binary: candidate, version: /v=(\S+)/.exec(r.stdout)?.[1] ?? 'unknown' };
}

/** Warns (loudly) that a suite is skipped, and returns whether it must be. */
export function skipWithoutRedis(suite: string): boolean {
  const found = redisBinary();
  if ('skipReason' in found) {
    console.warn(`\n[${suite}] SKIPPING: ${found.skipReason}.\n[${suite}] Install with: sudo bash ${METADATA_SERVERS_SETUP}\n`);
    return true;
  }
  return false;
}

export interface RedisServerOptions {
  /** `requirepass` (the default user's password). */
  password?: string;
  /** ACL users: name → password (full access). */
  users?: Record<string, string>;
  timeoutMs?: number;
}

/** `kill`, `stop`, `pause` and `resume` act on the server's current process. */
export interface RedisServer extends ProcessControls {
  readonly port: number;
  /** `redis://127.0.0.1:<port>` */
  readonly connectionString: string;
  process: ChildProcess | undefined;
  output(): string;
  /** Starts it again on the same port (empty: no persistence) and waits until it accepts commands. */
  restart(): Promise<void>;
}

export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer & { dir: string; cleanup(): Promise<void> }> {
  const found = redisBinary();
  if ('skipReason' in found) throw new Error(found.skipReason);
  const timeoutMs = options.timeoutMs ?? 20_000;
  return retryPortRace(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-redis-'));
    const port = await freePort();
    const out = new OutputTail(16_384);
    // A config file: ACL `user` lines cannot be given as command-line arguments.
    const conf = [
      `port ${port}`,
      'bind 127.0.0.1',
      'save ""',
      'appendonly no',
      `dir ${dir}`,
      'daemonize no',
      'protected-mode no',
      ...(options.password !== undefined ? [`requirepass ${options.password}`] : []),
      ...Object.entries(options.users ?? {}).map(([user, pw]) => `user ${user} on >${pw} ~* &* +@all`),
    ];
    fs.writeFileSync(path.join(dir, 'redis.conf'), conf.join('\n') + '\n');
    const args = [path.join(dir, 'redis.conf')];
    const server: RedisServer & { dir: string; cleanup(): Promise<void> } = {
      port,
      dir,
      connectionString: `redis://127.0.0.1:${port}`,
      process: undefined,
      output: () => out.text,
      ...controls(() => server.process),
      async restart() {
        await server.stop(2000);
        launch();
        await waitReady(server, timeoutMs);
      },
      async cleanup() {
        await server.stop(2000);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
    const launch = (): void => {
      const child = spawn(found.binary, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
      track(child);
      out.attach(child);
      server.process = child;
    };
    try {
      launch();
      await waitReady(server, timeoutMs);
      return server;
    } catch (e) {
      await server.cleanup();
      throw new Error(`${(e as Error).message}\n--- redis-server output ---\n${out.text}`);
    }
  });
}

/** Waits until the server answers an inline PING (any answer: +PONG or -NOAUTH both mean ready). */
function waitReady(server: RedisServer, timeoutMs: number): Promise<void> {
  const answers = async (): Promise<boolean> => {
    const answer = await new Promise<string | undefined>((resolve) => {
      const s = net.connect(server.port, '127.0.0.1');
      const t = setTimeout(() => {
        s.destroy();
        resolve(undefined);
      }, 1000);
      s.once('connect', () => s.write('PING\r\n'));
      s.once('data', (d) => {
        clearTimeout(t);
        s.destroy();
        resolve(d.toString('utf8'));
      });
      s.once('error', () => {
        clearTimeout(t);
        resolve(undefined);
      });
    });
    return answer !== undefined && /^[+-]/.test(answer) && !/LOADING/.test(answer);
  };
  return waitServing(server.process, answers, timeoutMs, 'redis-server', `127.0.0.1:${server.port}`);
}
