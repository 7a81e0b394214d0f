/**
 * The two-process set-up of the engine suites: an embedded metadata server, a peer process
 * (test/fixtures/peer.cjs) and an engine in the test process with a host region as large as the
 * peer's memory and the peer's segment open.
 */
import { MetadataServer, TransferEngine, type MemoryRegion, type Segment } from '../../lib';
import { Peer, type PeerConfig } from './peer';

export interface PeerPair {
  meta: MetadataServer;
  url: string;
  peer: Peer;
  engine: TransferEngine;
  region: MemoryRegion;
  seg: Segment;
  /** Closes the engine, the peer and the metadata server. */
  close(): Promise<void>;
}

export async function startPeerPair(peerConfig: Omit<PeerConfig, 'metadataServer'>): Promise<PeerPair> {
  const meta = new MetadataServer({ logger: null });
  let peer: Peer | undefined;
  let engine: TransferEngine | undefined;
  const close = async () => {
    await engine?.close();
    await peer?.close();
    await meta.close();
  };
  try {
    const url = (await meta.listen()).url;
    peer = await Peer.spawn({ ...peerConfig, metadataServer: url });
    engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    const region = await engine.registerMemory(Buffer.alloc(peerConfig.memory));
    const seg = await engine.openSegment(peer.info.name);
    return { meta, url, peer, engine, region, seg, close };
  } catch (e) {
    await close();
    throw e;
  }
}
