/**
 * Real etcd servers for tests: Debian's `etcd-server` package (binary `etcd`), installed by
 * scripts/setup-metadata-servers.sh.
 *
 * - `etcdBinary()` finds `etcd` (`$ETCD_BIN`, else the PATH) or says how to install it.
 * - `startEtcd()` starts a one-member cluster, `startEtcdCluster(3)` a three-member one; every member
 *   listens on 127.0.0.1 only, on free ports, with its data in a temp directory (removed by `stop()`).
 * - Members can be killed (SIGKILL), stopped (SIGTERM, SIGKILL fallback), paused (SIGSTOP) and
 *   restarted on the same ports, with their data or wiped.
 *
 * Every process started here is also SIGKILLed when the test worker exits, even if a test forgot it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { controls, freePort, OutputTail, retryPortRace, track, waitServing, type ProcessControls } from './server-process';

export const METADATA_SERVERS_SETUP = 'scripts/setup-metadata-servers.sh';

/** The etcd binary, or why there is none. */
export function etcdBinary(): { binary: string; version: string } | { skipReason: string } {
  const candidate = process.env.ETCD_BIN || 'etcd';
  const r = spawnSync(candidate, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) {
    return { skipReason: `the etcd binary (${candidate}) is not installed or does not run: install Debian's etcd-server with ${METADATA_SERVERS_SETUP} (as root)` };
  }
  const version = /etcd Version: (\S+)/.exec(r.stdout)?.[1] ?? 'unknown';
  return { binary: candidate, version };
}

/** Warns (loudly, once per suite) that a suite is skipped, and returns whether it must be. */
export function skipWithoutEtcd(suite: string): boolean {
  const found = etcdBinary();
  if ('skipReason' in found) {
    console.warn(`\n[${suite}] SKIPPING: ${found.skipReason}.\n[${suite}] Install with: sudo bash ${METADATA_SERVERS_SETUP}\n`);
    return true;
  }
  return false;
}

/** `kill`, `stop`, `pause` and `resume` act on the member's current process. */
export interface EtcdMember extends ProcessControls {
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  /** `127.0.0.1:<clientPort>` */
  readonly endpoint: string;
  readonly dataDir: string;
  process: ChildProcess | undefined;
  output(): string;
  /** Starts the member again on the same ports (with its data unless `wipe`), waits for health. */
  restart(options?: { wipe?: boolean }): Promise<void>;
}

export interface EtcdCluster {
  readonly members: EtcdMember[];
  /** `etcd://127.0.0.1:a,127.0.0.1:b,…` */
  readonly connectionString: string;
  /** Stops every member and removes the data directories. Idempotent. */
  stop(): Promise<void>;
}

/** Starts a one-member etcd. */
export async function startEtcd(options: { timeoutMs?: number } = {}): Promise<EtcdCluster> {
  return startEtcdCluster(1, options);
}

/** Starts an n-member etcd cluster on loopback and waits until every member reports healthy. */
export async function startEtcdCluster(n: number, options: { timeoutMs?: number } = {}): Promise<EtcdCluster> {
  const found = etcdBinary();
  if ('skipReason' in found) throw new Error(found.skipReason);
  const timeoutMs = options.timeoutMs ?? 30_000;
  return retryPortRace(async (attempt) => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-etcd-'));
    const token = `mooncake-test-${process.pid}-${Date.now()}-${attempt}`;
    const ports: { client: number; peer: number }[] = [];
    for (let i = 0; i < n; i++) ports.push({ client: await freePort(), peer: await freePort() });
    const initialCluster = ports.map((p, i) => `m${i}=http://127.0.0.1:${p.peer}`).join(',');
    const members = ports.map((p, i) => makeMember(found.binary, `m${i}`, p.client, p.peer, path.join(root, `m${i}`), initialCluster, token));
    const cluster: EtcdCluster = {
      members,
      connectionString: `etcd://${members.map((m) => m.endpoint).join(',')}`,
      stop: async () => {
        await Promise.all(members.map((m) => m.stop(2000)));
        fs.rmSync(root, { recursive: true, force: true });
      },
    };
    try {
      for (const m of members) (m as MemberImpl).spawn();
      await Promise.all(members.map((m) => waitHealthy(m, timeoutMs)));
      return cluster;
    } catch (e) {
      const out = members.map((m) => `--- ${m.name} ---\n${m.output()}`).join('\n');
      await cluster.stop();
      throw new Error(`${(e as Error).message}\n${out}`);
    }
  });
}

interface MemberImpl extends EtcdMember {
  spawn(): void;
}

function makeMember(binary: string, name: string, clientPort: number, peerPort: number, dataDir: string, initialCluster: string, token: string): MemberImpl {
  const out = new OutputTail(32_768);
  let clusterToken = token;
  let cluster = initialCluster;
  const m: MemberImpl = {
    name,
    clientPort,
    peerPort,
    endpoint: `127.0.0.1:${clientPort}`,
    dataDir,
    process: undefined,
    output: () => out.text,
    spawn() {
      const args = [
        '--name', name,
        '--data-dir', dataDir,
        '--listen-client-urls', `http://127.0.0.1:${clientPort}`,
        '--advertise-client-urls', `http://127.0.0.1:${clientPort}`,
        '--listen-peer-urls', `http://127.0.0.1:${peerPort}`,
        '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
        '--initial-cluster', cluster,
        '--initial-cluster-token', clusterToken,
        '--initial-cluster-state', 'new',
      ];
      const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      track(child);
      out.attach(child);
      m.process = child;
    },
    ...controls(() => m.process),
    async restart(options: { wipe?: boolean } = {}) {
      await m.stop(2000);
      if (options.wipe) {
        // A fresh one-member cluster on the same ports (a rebuilt etcd that lost everything).
        fs.rmSync(dataDir, { recursive: true, force: true });
        clusterToken = `${token}-wiped-${Date.now()}`;
        cluster = `${name}=http://127.0.0.1:${peerPort}`;
      }
      m.spawn();
      await waitHealthy(m, 30_000);
    },
  };
  return m;
}

/** Polls `GET /health` on the member's client URL until it answers `"health":"true"`. */
function waitHealthy(m: EtcdMember, timeoutMs: number): Promise<void> {
  const healthy = async (): Promise<boolean> => {
    try {
      const res = await fetch(`http://${m.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = await res.text();
      return res.ok && /"health"\s*:\s*"true"/.test(body);
    } catch {
      return false; // not up yet
    }
  };
  return waitServing(m.process, healthy, timeoutMs, `etcd member ${m.name}`, m.endpoint);
}

/** Waits (bounded) until `check` returns true; returns its last value. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 15_000, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let ok = false;
    try {
      ok = await check();
    } catch {
      ok = false;
    }
    if (ok || Date.now() >= deadline) return ok;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
