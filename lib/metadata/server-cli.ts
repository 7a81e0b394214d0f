/**
 * `mooncake-node metadata-server`: the CLI around MetadataServer.
 */
import * as net from 'node:net';
import { parseArgs } from 'node:util';
import { MooncakeError } from '../errors';
import { MetadataServer, type ListenInfo } from './server';

export const METADATA_SERVER_USAGE = `Usage: mooncake-node metadata-server [options]

Runs an HTTP metadata server compatible with upstream Mooncake's mooncake_http_metadata_server.
Peers use the connection string http://<host>:<port>/metadata.

Options:
  --port N               port to listen on (default 8080)
  --host H               address to bind (default 0.0.0.0, like upstream)
  --data-dir D           keep entries in D/metadata.json across restarts and crashes
                         (an append-only log: each change is on disk before it is
                         answered, and costs one record whatever the store's size)
  --ttl-ms T             expire entries not PUT again within T ms (default: never); mooncake-node
                         engines renew theirs with metadataTtlMs, upstream engines never do
  --path P               route of the API (default /metadata)
  --max-key-bytes N      longest key (default 4096)
  --max-value-bytes N    largest value (default 1048576, as upstream)
  --max-entries N        most entries (default 1000000)
  --max-store-bytes N    most bytes of keys and values in all (default 1073741824)
  --allowed-peers A,B    numeric IPs allowed to connect (default: anyone); others are
                         closed before a byte is read
  --reject-identical-rpc-meta
                         answer an identical rpc_meta re-PUT with 400, like upstream's Python server
  --access-log           print one line per request (method, key, status, bytes)
  -h, --help             show this help
`;

export interface MetadataServerCommandIO {
  /** Stops the server when aborted (in addition to SIGINT/SIGTERM). */
  signal?: AbortSignal;
  stdout?: (line: string) => void;
  stderr?: (line: string) => void;
  /** Called once the server listens. */
  onListening?: (info: ListenInfo) => void;
}

/**
 * `mooncake-node metadata-server --port N [--host H] [--data-dir D] [--ttl-ms T]`: runs until SIGINT or
 * SIGTERM (or `io.signal`), then closes the server. Rejects with INVALID_CONFIG on bad arguments.
 */
export async function runMetadataServerCommand(argv: string[], io: MetadataServerCommandIO = {}): Promise<void> {
  const out = io.stdout ?? ((line: string) => process.stdout.write(line + '\n'));
  const err = io.stderr ?? ((line: string) => process.stderr.write(line + '\n'));
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        'data-dir': { type: 'string' },
        'ttl-ms': { type: 'string' },
        path: { type: 'string' },
        'max-key-bytes': { type: 'string' },
        'max-value-bytes': { type: 'string' },
        'max-entries': { type: 'string' },
        'max-store-bytes': { type: 'string' },
        'allowed-peers': { type: 'string' },
        'reject-identical-rpc-meta': { type: 'boolean' },
        'access-log': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (cause) {
    throw new MooncakeError('INVALID_CONFIG', `metadata-server: ${(cause as Error).message}\n\n${METADATA_SERVER_USAGE}`, { cause });
  }
  if (values.help) {
    out(METADATA_SERVER_USAGE);
    return;
  }
  const int = (name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined => {
    const v = values[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (typeof v !== 'string' || !/^\d+$/.test(v) || n < min || n > max) {
      throw new MooncakeError('INVALID_CONFIG', `metadata-server: --${name} must be an integer in [${min}, ${max}], got '${String(v)}'`);
    }
    return n;
  };
  const allowedPeers = (v: string | undefined): string[] | undefined => {
    if (v === undefined) return undefined;
    const list = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
    const bad = list.find((x) => net.isIP(x) === 0);
    if (list.length === 0 || bad !== undefined) {
      throw new MooncakeError('INVALID_CONFIG', `metadata-server: --allowed-peers takes numeric IP addresses separated by commas, got '${bad ?? v}'`);
    }
    return list;
  };
  const port = int('port', 0, 65535) ?? 8080;
  const host = (values.host as string | undefined) ?? '0.0.0.0';
  const server = new MetadataServer({
    dataDir: values['data-dir'] as string | undefined,
    ttlMs: int('ttl-ms', 0),
    path: values.path as string | undefined,
    maxKeyBytes: int('max-key-bytes', 1),
    maxValueBytes: int('max-value-bytes', 1),
    maxEntries: int('max-entries', 1),
    maxStoreBytes: int('max-store-bytes', 1),
    allowedPeers: allowedPeers(values['allowed-peers'] as string | undefined),
    identicalRpcMetaPut: values['reject-identical-rpc-meta'] ? 'reject' : 'accept',
    logger: { info: out, warn: err, error: err },
    onRequest: values['access-log']
      ? (e) => out(`${new Date().toISOString()} ${e.method} ${e.key === undefined ? '-' : JSON.stringify(e.key)} ${e.status} ${e.bytes}`)
      : undefined,
  });

  let stop!: (reason: string) => void;
  const stopped = new Promise<string>((resolve) => {
    stop = resolve;
  });
  const onSigint = (): void => stop('SIGINT');
  const onSigterm = (): void => stop('SIGTERM');
  const onAbort = (): void => stop('abort');
  process.once('SIGINT', onSigint);
  process.once('SIGTERM', onSigterm);
  io.signal?.addEventListener('abort', onAbort, { once: true });
  if (io.signal?.aborted) stop('abort');
  try {
    const info = await server.listen(port, host);
    const extras = [
      values['data-dir'] !== undefined ? `data in ${server.dataFile}` : 'in memory only',
      values['ttl-ms'] !== undefined && Number(values['ttl-ms']) > 0 ? `TTL ${String(values['ttl-ms'])} ms` : undefined,
    ].filter(Boolean);
    out(`mooncake-node metadata server listening on ${info.url} (${extras.join(', ')})`);
    if (info.host === '0.0.0.0' || info.host === '::') {
      out(`peers connect with http://<this host's address>:${info.port}${server.path}`);
    }
    io.onListening?.(info);
    const reason = await stopped;
    out(`metadata server: ${reason}, shutting down`);
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigterm);
    io.signal?.removeEventListener('abort', onAbort);
    await server.close();
  }
}
