import { MooncakeError } from './errors';

export interface SegmentBuffer {
  name: string;
  /** Absolute address in the peer, as it published it. */
  address: bigint;
  length: number;
}

/** An opened peer segment: what the peer published, and the handle transfers use. */
export class Segment {
  /** @internal */
  constructor(
    /** @internal */ readonly owner: object,
    readonly name: string,
    /** @internal */ public handle: number,
    public buffers: SegmentBuffer[],
    public protocol: string,
    /** TCP framing used with this peer: 2 when it advertises `tcp_proto_version >= 2`, else 1. */
    public protoVersion: number,
    /** The peer's data address. */
    public ip: string,
    public dataPort: number,
    /** The peer's handshake (RPC) port, for notifications and probes; 0 when unknown. */
    public rpcPort: number,
  ) {}

  /** @internal */ closed = false;

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
