/**
 * `mooncake-node metadata-server`: an HTTP metadata server compatible with upstream's
 * mooncake_http_metadata_server, run until SIGINT/SIGTERM.
 */
import { commandHelp, defineCommand } from '../cli/command';
import { parseFlags, type FlagValues } from '../cli/flags';
import { DEFAULT_BIND_HOST, DEFAULT_METADATA_SERVER_PORT } from '../util/defaults';
import { MetadataServer, type ListenInfo } from './server';

const FLAGS = {
  port: { type: 'int', min: 0, max: 65535, default: DEFAULT_METADATA_SERVER_PORT, help: 'port to listen on, as upstream (0 picks a free one)' },
  host: { type: 'string', default: DEFAULT_BIND_HOST, arg: 'H', help: 'address to bind; 0.0.0.0 serves other machines (upstream binds 0.0.0.0: nothing here authenticates)' },
  'data-dir': { type: 'string', arg: 'D', help: 'keep entries in D/metadata.json across restarts and crashes: an append-only log, each change on disk before it is answered, one record whatever the store holds' },
  'ttl-ms': { type: 'int', min: 0, arg: 'T', defaultText: 'never', help: 'expire entries not PUT again within T ms; mooncake-node engines renew theirs with metadataTtlMs, upstream engines never do' },
  path: { type: 'string', arg: 'P', default: '/metadata', help: 'route of the API' },
  'max-key-bytes': { type: 'int', min: 1, default: 4096, help: 'longest key' },
  'max-value-bytes': { type: 'int', min: 1, default: 1048576, help: 'largest value (as upstream)' },
  'max-entries': { type: 'int', min: 1, default: 1000000, help: 'most entries' },
  'max-store-bytes': { type: 'size', min: 1, default: 1073741824, help: 'most bytes of keys and values in all (a PUT past it: 507, before its body with Expect: 100-continue)' },
  'allowed-peers': { type: 'list', arg: 'IP', help: 'numeric addresses allowed to connect (default: anyone); others are closed before a byte is read' },
  'reject-identical-rpc-meta': { type: 'boolean', help: "answer an identical rpc_meta re-PUT with 400, like upstream's Python server" },
  'access-log': { type: 'boolean', help: 'print one line per request (method, key, status, bytes)' },
} as const;

export interface MetadataServerCommandIO {
  /** Stops the server when aborted (in addition to SIGINT/SIGTERM). */
  signal?: AbortSignal;
  stdout?: (line: string) => void;
  stderr?: (line: string) => void;
  /** Called once the server listens. */
  onListening?: (info: ListenInfo) => void;
  /** Stop on SIGINT and SIGTERM (default true). */
  handleSignals?: boolean;
}

async function serve(values: FlagValues<typeof FLAGS>, io: MetadataServerCommandIO): Promise<void> {
  const out = io.stdout ?? ((line: string) => process.stdout.write(line + '\n'));
  const err = io.stderr ?? ((line: string) => process.stderr.write(line + '\n'));
  const server = new MetadataServer({
    dataDir: values['data-dir'],
    ttlMs: values['ttl-ms'],
    path: values.path,
    maxKeyBytes: values['max-key-bytes'],
    maxValueBytes: values['max-value-bytes'],
    maxEntries: values['max-entries'],
    maxStoreBytes: values['max-store-bytes'],
    allowedPeers: values['allowed-peers']?.flatMap((v) => v.split(',')).filter((v) => v !== ''),
    identicalRpcMetaPut: values['reject-identical-rpc-meta'] === true ? 'reject' : 'accept',
    logger: { info: out, warn: err, error: err },
    onRequest:
      values['access-log'] === true
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
  const handleSignals = io.handleSignals ?? true;
  if (handleSignals) {
    process.once('SIGINT', onSigint);
    process.once('SIGTERM', onSigterm);
  }
  io.signal?.addEventListener('abort', onAbort, { once: true });
  if (io.signal?.aborted === true) stop('abort');
  try {
    const info = await server.listen(values.port, values.host);
    const ttl = values['ttl-ms'];
    const extras = [values['data-dir'] !== undefined ? `data in ${server.dataFile}` : 'in memory only', ttl !== undefined && ttl > 0 ? `TTL ${ttl} ms` : undefined].filter(Boolean);
    out(`mooncake-node metadata server listening on ${info.url} (${extras.join(', ')})`);
    if (info.host === '0.0.0.0' || info.host === '::') out(`peers connect with http://<this host's address>:${info.port}${server.path}`);
    else if (info.host.startsWith('127.') || info.host === '::1') out('loopback only: --host 0.0.0.0 serves other machines');
    io.onListening?.(info);
    const reason = await stopped;
    out(`metadata server: ${reason}, shutting down`);
  } finally {
    if (handleSignals) {
      process.removeListener('SIGINT', onSigint);
      process.removeListener('SIGTERM', onSigterm);
    }
    io.signal?.removeEventListener('abort', onAbort);
    await server.close();
  }
}

export const metadataServerCommand = defineCommand({
  name: 'metadata-server',
  summary: 'upstream-compatible HTTP metadata server',
  description: [
    "Runs an HTTP metadata server compatible with upstream Mooncake's mooncake_http_metadata_server until",
    'SIGINT or SIGTERM. Peers use the connection string http://<host>:<port>/metadata.',
  ].join('\n'),
  flags: FLAGS,
  signals: 'own',
  examples: ['mooncake-node metadata-server --port 8080 --host 0.0.0.0 --data-dir /var/lib/mooncake-meta --ttl-ms 30000'],
  run: (values) => serve(values, {}),
});

/** The `--help` text of `mooncake-node metadata-server`. */
export const METADATA_SERVER_USAGE = commandHelp(metadataServerCommand);

/**
 * Runs `mooncake-node metadata-server <argv>` in this process: until SIGINT or SIGTERM (or `io.signal`),
 * then closes the server. Rejects with INVALID_CONFIG on bad arguments.
 */
export async function runMetadataServerCommand(argv: readonly string[], io: MetadataServerCommandIO = {}): Promise<void> {
  const { values } = parseFlags({ ...FLAGS, help: { type: 'boolean', short: 'h', help: '' } }, argv, { command: 'metadata-server' });
  if (values.help === true) {
    (io.stdout ?? ((line: string) => process.stdout.write(line)))(METADATA_SERVER_USAGE);
    return;
  }
  const { help: _help, ...rest } = values;
  await serve(rest, io);
}
