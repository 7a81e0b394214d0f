import { MooncakeError } from '../errors';

export interface SegmentBuffer {
  readonly name: string;
  /** Absolute address in the peer, as it published it. */
  readonly address: bigint;
  readonly length: number;
}

/** What the engine learned about a peer when it opened (or reopened) its segment. */
export interface SegmentInfo {
  handle: number;
  buffers: readonly SegmentBuffer[];
  protocol: string;
  protoVersion: number;
  ip: string;
  dataPort: number;
  rpcPort: number;
}

/**
 * An opened peer segment: what the peer published, and the handle transfers use. Read-only to callers;
 * the engine refreshes it when the segment is reopened.
 */
export class Segment {
  /** Made by `TransferEngine.openSegment`, not by callers. */
  constructor(
    /** @internal */ readonly owner: object,
    readonly name: string,
    info: SegmentInfo,
  ) {
    this.info = info;
  }

  private info: SegmentInfo;
  /** @internal */ closed = false;

  /** @internal The engine's handle for this peer. */
  get handle(): number {
    return this.info.handle;
  }

  /** The buffers the peer published, in its order. */
  get buffers(): readonly SegmentBuffer[] {
    return this.info.buffers;
  }

  get protocol(): string {
    return this.info.protocol;
  }

  /** TCP framing used with this peer: 2 when it advertises `tcp_proto_version >= 2`, else 1. */
  get protoVersion(): number {
    return this.info.protoVersion;
  }

  /** The peer's data address. */
  get ip(): string {
    return this.info.ip;
  }

  get dataPort(): number {
    return this.info.dataPort;
  }

  /** The peer's handshake (RPC) port, for notifications and probes; 0 when unknown. */
  get rpcPort(): number {
    return this.info.rpcPort;
  }

  /** @internal Called by the engine when it reopens the segment. */
  refresh(info: SegmentInfo): void {
    this.info = info;
  }

  /** Absolute remote address of `offset` inside the peer's buffer `index` (bounds checked). */
  address(index: number, offset = 0, length = 1): bigint {
    const b = this.buffers[index];
    if (b === undefined) throw new MooncakeError('INVALID_ARGUMENT', `segment ${this.name} has no buffer ${index} (it published ${this.buffers.length})`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0 || offset + length > b.length) {
      throw new MooncakeError('INVALID_REMOTE_ADDRESS', `range [${offset}, ${offset}+${length}) is outside buffer ${index} of ${b.length} bytes`);
    }
    return b.address + BigInt(offset);
  }

  /** upstream's get_first_buffer_address */
  get firstBufferAddress(): bigint {
    return this.buffers[0]?.address ?? 0n;
  }
}
