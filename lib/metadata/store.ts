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
 * etcd and redis are not implemented yet: a backend plugs in through `registerMetadataBackend`.
 */
import { MooncakeError } from '../errors';
import { HttpMetadataStore, type HttpMetadataStoreOptions } from './http-store';

export interface MetadataStore {
  /** The connection string this store talks to. */
  readonly url: string;
  /** The stored value, or undefined when the key is missing (HTTP 404). */
  get(key: string, options?: { signal?: AbortSignal }): Promise<string | undefined>;
  set(key: string, value: string): Promise<void>;
  /** false when the key was missing. */
  remove(key: string): Promise<boolean>;
  close(): Promise<void>;
}

/** The literal connection string that selects upstream's P2P handshake mode. */
export const P2P_HANDSHAKE = 'P2PHANDSHAKE';

export type MetadataConnection =
  | { kind: 'p2p'; connectionString: string }
  | { kind: 'http'; connectionString: string; url: string }
  | { kind: 'etcd'; connectionString: string; endpoints: string[] }
  | { kind: 'redis'; connectionString: string; address: string };

export type MetadataBackendKind = Exclude<MetadataConnection['kind'], 'p2p'>;

export interface CreateMetadataStoreOptions {
  /** Options for the HTTP backend (timeouts, limits). */
  http?: HttpMetadataStoreOptions;
}

/** Builds a store for a parsed connection; registered per backend kind. */
export type MetadataBackendFactory<K extends MetadataBackendKind = MetadataBackendKind> = (
  connection: Extract<MetadataConnection, { kind: K }>,
  options: CreateMetadataStoreOptions,
) => MetadataStore;

/** Where a planned backend will come from, for the NOT_IMPLEMENTED message. */
const PLANNED: Record<'etcd' | 'redis', string> = {
  etcd: 'an etcd v3 backend (planned)',
  redis: 'a redis backend (planned)',
};

const factories = new Map<MetadataBackendKind, MetadataBackendFactory>();
factories.set('http', ((c: Extract<MetadataConnection, { kind: 'http' }>, o: CreateMetadataStoreOptions) =>
  new HttpMetadataStore(c.url, o.http)) as MetadataBackendFactory);

/**
 * Installs (or replaces) the factory for a backend kind. This is the seam for the etcd and redis
 * backends: their module calls `registerMetadataBackend('etcd', (c) => new EtcdMetadataStore(c.endpoints))`.
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
 * `details.p2p === true` (P2P mode has no store; check `isP2PHandshake` first). etcd and redis throw
 * NOT_IMPLEMENTED until a backend is registered.
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
    const planned = PLANNED[connection.kind as 'etcd' | 'redis'];
    const why =
      connection.kind === 'etcd' && !connectionString.includes('://')
        ? ` ('${connectionString}' has no scheme, which upstream treats as etcd; did you mean http://${connectionString}/metadata?)`
        : '';
    throw new MooncakeError(
      'NOT_IMPLEMENTED',
      `the ${connection.kind} metadata backend is not implemented yet (${planned})${why}; use an HTTP metadata server, e.g. ` +
        '`mooncake-node metadata-server --port 8080` with http://host:8080/metadata, or P2PHANDSHAKE',
      { details: { connectionString, backend: connection.kind } },
    );
  }
  return factory(connection, options);
}

function splitEndpoints(s: string): string[] {
  return s
    .split(/[,;]/)
    .map((e) => e.trim())
    .filter((e) => e.length > 0);
}
