/**
 * Metadata key helpers, byte-for-byte as upstream Mooncake builds them
 * (`TransferMetadata::TransferMetadata` and `getFullMetadataKey` in
 * mooncake-transfer-engine/src/transfer_metadata.cpp).
 */

/** The environment variable upstream reads for the optional cluster namespace. */
export const CLUSTER_ID_ENV = 'MC_METADATA_CLUSTER_ID';

/**
 * `mooncake/` plus the cluster id (when non-empty) with a trailing `/` added unless it already ends in one.
 * `clusterId` defaults to `$MC_METADATA_CLUSTER_ID`; pass `''` to ignore the environment.
 */
export function metadataKeyPrefix(clusterId: string | undefined = process.env[CLUSTER_ID_ENV]): string {
  if (clusterId === undefined || clusterId.length === 0) return 'mooncake/';
  return 'mooncake/' + (clusterId.endsWith('/') ? clusterId : clusterId + '/');
}

/** `mooncake/[cluster/]rpc_meta/<serverName>`: where a peer publishes `{ip_or_host_name, rpc_port}`. */
export function rpcMetaKey(serverName: string, clusterId?: string): string {
  return metadataKeyPrefix(clusterId) + 'rpc_meta/' + serverName;
}

/**
 * The key of a segment descriptor. Leading `/` characters are stripped (as `openSegment` does); a name
 * without `/` lives under `ram/`, a name containing `/` (e.g. `nvmeof/...`) is used as is.
 */
export function segmentKey(segmentName: string, clusterId?: string): string {
  const name = segmentName.replace(/^\/+/, '');
  return metadataKeyPrefix(clusterId) + (name.includes('/') ? name : 'ram/' + name);
}

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/**
 * Percent-encodes a key exactly like libcurl's `curl_easy_escape`: the UTF-8 bytes of the key, with every
 * byte outside `A-Z a-z 0-9 - . _ ~` written as `%XX` (uppercase hex). Unlike `encodeURIComponent`, it
 * also escapes `! ' ( ) *`.
 */
export function escapeKeyForUrl(key: string): string {
  let out = '';
  for (const byte of Buffer.from(key, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x80 && UNRESERVED.test(ch) ? ch : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}
