/**
 * The metadata backend interface and the connection-string rules of upstream Mooncake
 * (`TransferMetadata::TransferMetadata`, `MetadataStoragePlugin::Create` in
 * mooncake-transfer-engine/src/transfer_metadata{,_plugin}.cpp):
 *
 * - exactly `P2PHANDSHAKE`            → P2P handshake mode, no store at all;
 * - `http://…` / `https://…`          → HTTP store; the whole string is the base URL (path included);
 * - `etcd://a:2379,b:2379`            → etcd (endpoints after the scheme);
 * - `redis://h:6379`                  → redis;
 * - anything without `://`            → etcd (so `127.0.0.1:8080` means etcd, not HTTP!).
 *
 * Every backend stores the same JSON under the same keys with plain GET / SET / DEL, as upstream's
 * plugins do; the etcd and redis client libraries (`etcd3`, `redis`) are loaded only when such a store
 * is created. Other backends plug in through `registerMetadataBackend`.
 */
import { MooncakeError } from '../errors';
import { EtcdMetadataStore, type EtcdMetadataStoreOptions } from './etcd-store';
import { HttpMetadataStore, type HttpMetadataStoreOptions } from './http-store';
import { RedisMetadataStore, type RedisMetadataStoreOptions } from './redis-store';
import type { MetadataStore } from './store-util';

export type { MetadataRenewal, MetadataStore, SetOptions } from './store-util';

/** The literal connection string that selects upstream's P2P handshake mode. */
export const P2P_HANDSHAKE = 'P2PHANDSHAKE';

export type MetadataConnection =
  | { kind: 'p2p'; connectionString: string }
  | { kind: 'http'; connectionString: string; url: string }
  | { kind: 'etcd'; connectionString: string; endpoints: string[] }
  | { kind: 'redis'; connectionString: string; address: string };

export type MetadataBackendKind = Exclude<MetadataConnection['kind'], 'p2p'>;

export interface CreateMetadataStoreOptions {
  /**
   * Deadline of each metadata operation in ms, whatever the backend (a backend's own options win).
   * Defaults: HTTP 3000 (upstream's libcurl), etcd 5000 (upstream's etcd wrapper), redis 3000.
   */
  timeoutMs?: number;
  /** Options for the HTTP backend (timeouts, limits). */
  http?: HttpMetadataStoreOptions;
  /** Options for the etcd backend (timeouts). */
  etcd?: EtcdMetadataStoreOptions;
  /** Options for the redis backend (timeouts, credentials; default from MC_REDIS_*). */
  redis?: RedisMetadataStoreOptions;
}

/** Builds a store for a parsed connection; registered per backend kind. */
export type MetadataBackendFactory<K extends MetadataBackendKind = MetadataBackendKind> = (
  connection: Extract<MetadataConnection, { kind: K }>,
  options: CreateMetadataStoreOptions,
) => MetadataStore;

const factories = new Map<MetadataBackendKind, MetadataBackendFactory>();
const builtIn: { [K in MetadataBackendKind]: MetadataBackendFactory<K> } = {
  http: (c, o) => new HttpMetadataStore(c.url, { timeoutMs: o.timeoutMs, ...o.http }),
  // The stores load their client library (etcd3, redis) in their constructor, not at import.
  etcd: (c, o) => new EtcdMetadataStore(c.endpoints, { timeoutMs: o.timeoutMs, connectionString: c.connectionString, ...o.etcd }),
  redis: (c, o) => new RedisMetadataStore(c.address, { timeoutMs: o.timeoutMs, ...o.redis }),
};
for (const kind of Object.keys(builtIn) as MetadataBackendKind[]) factories.set(kind, builtIn[kind] as MetadataBackendFactory);

/**
 * Installs (or replaces) the factory for a backend kind, e.g. to wrap the built-in etcd store or to
 * substitute a test double: `registerMetadataBackend('etcd', (c, o) => new MyStore(c.endpoints))`.
 * Returns a function that restores the previous factory.
 */
export function registerMetadataBackend<K extends MetadataBackendKind>(kind: K, factory: MetadataBackendFactory<K>): () => void {
  const previous = factories.get(kind);
  factories.set(kind, factory as unknown as MetadataBackendFactory);
  return () => {
    if (previous) factories.set(kind, previous);
    else factories.delete(kind);
  };
}

/** True when the connection string selects P2P handshake mode (exactly `P2PHANDSHAKE`, like upstream). */
export function isP2PHandshake(connectionString: string): boolean {
  return connectionString === P2P_HANDSHAKE;
}

/** Classifies a connection string with upstream's rules, without creating anything. */
export function parseMetadataConnectionString(connectionString: string): MetadataConnection {
  if (typeof connectionString !== 'string' || connectionString.length === 0) {
    throw new MooncakeError('INVALID_CONFIG', 'the metadata connection string is empty: use e.g. http://127.0.0.1:8080/metadata or P2PHANDSHAKE', {
      details: { connectionString },
    });
  }
  if (connectionString === P2P_HANDSHAKE) return { kind: 'p2p', connectionString };
  const pos = connectionString.indexOf('://');
  if (pos < 0) {
    // Upstream's rule: no scheme means etcd, so 'host:8080' is an etcd endpoint, not an HTTP server.
    return { kind: 'etcd', connectionString, endpoints: splitEndpoints(connectionString) };
  }
  const scheme = connectionString.slice(0, pos);
  const rest = connectionString.slice(pos + 3);
  switch (scheme) {
    case 'http':
    case 'https':
      return { kind: 'http', connectionString, url: connectionString };
    case 'etcd':
      return { kind: 'etcd', connectionString, endpoints: splitEndpoints(rest) };
    case 'redis':
      return { kind: 'redis', connectionString, address: rest };
    default: {
      const lower = scheme.toLowerCase();
      const hint =
        lower === 'http' || lower === 'https' || lower === 'etcd' || lower === 'redis'
          ? ` (schemes are case-sensitive, as in upstream: write '${lower}://')`
          : scheme === 'p2p' || lower === 'p2phandshake'
            ? " (P2P mode is selected by the exact string 'P2PHANDSHAKE')"
            : '';
      throw new MooncakeError(
        'INVALID_CONFIG',
        `unknown metadata backend '${scheme}' in '${connectionString}'${hint}: use http://host:port/metadata, etcd://host:2379, redis://host:6379 or P2PHANDSHAKE`,
        { details: { connectionString, scheme } },
      );
    }
  }
}

/**
 * Creates the store for a connection string. `P2PHANDSHAKE` throws an INVALID_CONFIG error with
 * `details.p2p === true` (P2P mode has no store; check `isP2PHandshake` first). Creating a store does
 * not connect: the first operation does, and fails with a METADATA error when the backend is down.
 */
export function createMetadataStore(connectionString: string, options: CreateMetadataStoreOptions = {}): MetadataStore {
  const connection = parseMetadataConnectionString(connectionString);
  if (connection.kind === 'p2p') {
    throw new MooncakeError(
      'INVALID_CONFIG',
      'P2PHANDSHAKE mode has no metadata store: peers exchange descriptors directly over the handshake port',
      { details: { connectionString, p2p: true } },
    );
  }
  const factory = factories.get(connection.kind);
  if (!factory) {
    throw new MooncakeError('NOT_IMPLEMENTED', `no ${connection.kind} metadata backend is registered`, {
      details: { connectionString, backend: connection.kind },
    });
  }
  return factory(connection, options);
}

function splitEndpoints(s: string): string[] {
  return s
    .split(/[,;]/)
    .map((e) => e.trim())
    .filter((e) => e.length > 0);
}
