export {
  type MetadataStore,
  type MetadataConnection,
  type MetadataBackendKind,
  type MetadataBackendFactory,
  type CreateMetadataStoreOptions,
  type SetOptions,
  type MetadataRenewal,
  P2P_HANDSHAKE,
  createMetadataStore,
  parseMetadataConnectionString,
  isP2PHandshake,
  registerMetadataBackend,
} from './store';
export { HttpMetadataStore, type HttpMetadataStoreOptions, type RequestOptions } from './http-store';
export { EtcdMetadataStore, type EtcdMetadataStoreOptions } from './etcd-store';
export {
  RedisMetadataStore,
  type RedisMetadataStoreOptions,
  REDIS_USERNAME_ENV,
  REDIS_PASSWORD_ENV,
  REDIS_DB_INDEX_ENV,
} from './redis-store';
export {
  MetadataServer,
  type MetadataServerOptions,
  type MetadataServerLogger,
  type MetadataServerStats,
  type ListenInfo,
  type RequestEvent,
} from './server';
export { type MetadataServerCommandIO, METADATA_SERVER_USAGE, runMetadataServerCommand } from './command';
export { decodeRpcMeta, encodeRpcMeta, type RpcMeta } from './rpc-meta';
export { CLUSTER_ID_ENV, metadataKeyPrefix, rpcMetaKey, segmentKey, escapeKeyForUrl } from './keys';
