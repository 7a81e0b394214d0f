/**
 * Every metadata backend as one list, so a suite can run against each of them (engine tests, the KV
 * handshake): `for (const b of metadataBackends()) describe.skipIf(b.skip)(b.kind, …)`.
 *
 * - http: mooncake-node's MetadataServer in this process (optionally with a TTL);
 * - etcd: a one-member etcd on loopback (test/helpers/etcd.ts);
 * - redis: a redis-server without persistence on loopback (test/helpers/redis.ts).
 *
 * A missing etcd / redis-server binary makes that entry `skip: true`, with a loud warning.
 */
import { MetadataServer } from '../../lib/metadata/server';
import { skipWithoutEtcd, startEtcd } from './etcd';
import { skipWithoutRedis, startRedis } from './redis';

export type BackendKind = 'http' | 'etcd' | 'redis';

export interface RunningBackend {
  kind: BackendKind;
  /** The connection string engines (and stores) use. */
  conn: string;
  /** Stops the server; `restartEmpty` starts it again. */
  stop(): Promise<void>;
  /** Starts the server again with nothing in it (a rebuilt etcd, a replaced redis, a fresh HTTP server). */
  restartEmpty(): Promise<void>;
  /** Stops everything and removes temp data. Idempotent. */
  cleanup(): Promise<void>;
}

export interface BackendOptions {
  /** HTTP only: the server's entry TTL (`MetadataServer` `ttlMs`). */
  httpTtlMs?: number;
}

export interface BackendEntry {
  kind: BackendKind;
  skip: boolean;
  start(options?: BackendOptions): Promise<RunningBackend>;
}

/** The three backends; `suite` names the caller in skip warnings. */
export function metadataBackends(suite: string, kinds: BackendKind[] = ['http', 'etcd', 'redis']): BackendEntry[] {
  const all: BackendEntry[] = [];
  if (kinds.includes('http')) {
    all.push({
      kind: 'http',
      skip: false,
      start: async (options = {}) => {
        let server = new MetadataServer({ ttlMs: options.httpTtlMs, logger: null });
        const { url, port } = await server.listen(0);
        return {
          kind: 'http',
          conn: url,
          stop: () => server.close(),
          restartEmpty: async () => {
            await server.close();
            server = new MetadataServer({ ttlMs: options.httpTtlMs, logger: null });
            await server.listen(port);
          },
          cleanup: () => server.close(),
        };
      },
    });
  }
  if (kinds.includes('etcd')) {
    all.push({
      kind: 'etcd',
      skip: skipWithoutEtcd(`${suite}/etcd`),
      start: async () => {
        const etcd = await startEtcd();
        return {
          kind: 'etcd',
          conn: etcd.connectionString,
          stop: () => etcd.members[0].stop(),
          restartEmpty: () => etcd.members[0].restart({ wipe: true }),
          cleanup: () => etcd.stop(),
        };
      },
    });
  }
  if (kinds.includes('redis')) {
    all.push({
      kind: 'redis',
      skip: skipWithoutRedis(`${suite}/redis`),
      start: async () => {
        const redis = await startRedis();
        return {
          kind: 'redis',
          conn: redis.connectionString,
          stop: () => redis.stop(),
          restartEmpty: () => redis.restart(), // no persistence: a restarted redis is empty
          cleanup: () => redis.cleanup(),
        };
      },
    });
  }
  return all;
}
