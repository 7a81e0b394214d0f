export {
  type MetadataStore,
  type MetadataConnection,
  type MetadataBackendKind,
  type MetadataBackendFactory,
  type CreateMetadataStoreOptions,
  P2P_HANDSHAKE,
  createMetadataStore,
  parseMetadataConnectionString,
  isP2PHandshake,
  registerMetadataBackend,
} from './store';
export { HttpMetadataStore, type HttpMetadataStoreOptions, type RequestOptions } from './http-store';
export {
  MetadataServer,
  type MetadataServerOptions,
  type MetadataServerLogger,
  type ListenInfo,
  type RequestEvent,
  type MetadataServerCommandIO,
  METADATA_SERVER_USAGE,
  runMetadataServerCommand,
} from './server';
export { CLUSTER_ID_ENV, metadataKeyPrefix, rpcMetaKey, segmentKey, escapeKeyForUrl } from './keys';
