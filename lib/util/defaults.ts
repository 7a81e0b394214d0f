/**
 * Where mooncake-node's servers listen unless told otherwise, in one place.
 *
 * - Every server binds loopback (127.0.0.1) by default: none of them authenticates (see the threat model
 *   in the README), so serving other machines is a choice made with `--host` / `host`.
 * - The commands listen on the well-known ports: `metadata-server` on 8080 (upstream's
 *   mooncake_http_metadata_server), `proxy` on 8000 (vllm-ascend's proxies).
 * - The programmatic servers (`MetadataServer.listen()`, `createProxy()`) pick a free port unless given
 *   one, and report it (`listen()` resolves with the URL).
 */
export const DEFAULT_BIND_HOST = '127.0.0.1';
/** `mooncake-node metadata-server` without --port. */
export const DEFAULT_METADATA_SERVER_PORT = 8080;
/** `mooncake-node proxy` without --port. */
export const DEFAULT_PROXY_PORT = 8000;
