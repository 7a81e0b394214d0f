/**
 * The KV-cache layout of one rank, and its address arithmetic.
 *
 * A rank holds `numLayers` layers. With `attention: 'mha'` (MHA, GQA, MQA) each layer has a K tensor and a
 * V tensor, or, with `combinedKv`, one tensor whose every (head, token) cell holds that head's K then V (vLLM's
 * `[num_blocks, heads, block_size, K|V]` page, the LBHNC layout its MooncakeConnector registers: `headBytes`
 * then counts K and V together); with `attention: 'mla'` each layer has one latent tensor, or, with
 * `ropeBytes`, two as vLLM-Ascend keeps them: the latent ("nope", `headBytes` wide) and the rope part
 * (`ropeBytes` wide).
 * Every tensor is
 * `[numBlocks][block]`, and a block is `blockSize` tokens × `numHeads` heads × `headBytes` bytes
 * (`headBytes` = head_dim × dtype bytes; for MLA the latent width × dtype bytes, with `numHeads` 1).
 *
 * Inside a block the order is either
 * - `NHD` (default, vLLM's `[num_blocks, block_size, num_kv_heads, head_size]`): token-major, so a slice
 *   of the heads is `blockSize` separate pieces, or
 * - `HND` (`[num_blocks, num_kv_heads, block_size, head_size]`): head-major, so a slice of consecutive
 *   heads is one contiguous piece of the block (the better choice when prefill TP > decode TP).
 *
 * Tensors are numbered layer-major: tensor `2*layer` is K and `2*layer + 1` is V (`combinedKv`: tensor `layer`,
 * kind 'kv'; MLA: tensor `layer`; with `ropeBytes`, `2*layer` is the latent and `2*layer + 1` the rope part,
 * whose blocks are `blockSize × ropeBytes` bytes).
 */
import { MooncakeError, describeValue } from '../errors';

export type KvAttention = 'mha' | 'mla';
export type KvHeadLayout = 'NHD' | 'HND';
/** Which tensor of a layer: K or V (MHA/GQA), both in one ('kv', `combinedKv`), or the latent tensor (MLA). */
export type KvTensorKind = 'k' | 'v' | 'kv' | 'latent' | 'rope';

export interface KvLayoutSpec {
  /** 'mha' (K and V per layer; also GQA/MQA) or 'mla' (one latent tensor per layer). Default 'mha'. */
  attention?: KvAttention;
  numLayers: number;
  /** Blocks per tensor (vLLM's num_gpu_blocks). */
  numBlocks: number;
  /** Tokens per block. */
  blockSize: number;
  /** Bytes per token per head: head_dim × dtype bytes (MLA: latent width × dtype bytes). */
  headBytes: number;
  /** KV heads this rank holds (its TP shard). MLA: 1 (the default for MLA). */
  numHeads?: number;
  /** Order inside a block: 'NHD' (token-major, default) or 'HND' (head-major). */
  headLayout?: KvHeadLayout;
  /** MLA only: a second tensor per layer holding the rope part, this many bytes per token. */
  ropeBytes?: number;
  /**
   * MHA only: K and V share one tensor per layer, each (head, token) cell holding K then V (`headBytes` = both);
   * with `headLayout: 'HND'` this is vLLM's LBHNC page. Default false (a K and a V tensor per layer).
   */
  combinedKv?: boolean;
}

/** The layout as published in the registry (snake_case, like the rest of the metadata). */
export interface KvLayoutJson {
  attention: KvAttention;
  num_layers: number;
  num_blocks: number;
  block_size: number;
  head_bytes: number;
  num_heads: number;
  head_layout: KvHeadLayout;
  /** Present for MLA layouts with a separate rope tensor. */
  rope_bytes?: number;
  /** Present (true) for MHA layouts with K and V in one tensor per layer. */
  combined_kv?: boolean;
}

/** A piece of a block: `offset` bytes from the block start, `length` bytes long. */
export interface ByteRange {
  offset: number;
  length: number;
}

/** A run of consecutive block ids. */
export interface BlockRun {
  start: number;
  count: number;
}

/** A run where both the local and the remote block ids are consecutive. */
export interface PairedRun {
  /** Index of the run's first pair in the block lists. */
  index: number;
  local: number;
  remote: number;
  count: number;
}

const MAX_BYTES = Number.MAX_SAFE_INTEGER;

function bad(field: string, value: unknown, what: string): MooncakeError {
  return new MooncakeError('INVALID_CONFIG', `layout.${field} must be ${what}, got ${describeValue(value)}`, {
    details: { field: `layout.${field}`, value },
  });
}

function positiveInt(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw bad(field, v, 'a positive integer');
  return v;
}

export class KvLayout {
  readonly attention: KvAttention;
  readonly numLayers: number;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly headBytes: number;
  readonly numHeads: number;
  readonly headLayout: KvHeadLayout;
  /** MLA: bytes per token of the rope tensor (0: no rope tensor). */
  readonly ropeBytes: number;
  /** K and V in one tensor per layer (MHA). */
  readonly combinedKv: boolean;
  /** 2 for MHA (K, V) and for MLA with a rope tensor, 1 for MLA and for MHA with combinedKv. */
  readonly tensorsPerLayer: 1 | 2;
  readonly tensorCount: number;
  /** Bytes of one block of a K, V, K|V or latent tensor (rope tensors: tensorBlockBytes). */
  readonly blockBytes: number;
  /** Bytes of a K, V or latent tensor, all its blocks (rope tensors: tensorSize). */
  readonly tensorBytes: number;
  /** Bytes of all tensors. */
  readonly totalBytes: number;

  private constructor(s: Required<KvLayoutSpec>) {
    this.attention = s.attention;
    this.numLayers = s.numLayers;
    this.numBlocks = s.numBlocks;
    this.blockSize = s.blockSize;
    this.headBytes = s.headBytes;
    this.numHeads = s.numHeads;
    this.headLayout = s.headLayout;
    this.ropeBytes = s.ropeBytes;
    this.combinedKv = s.combinedKv;
    this.tensorsPerLayer = (s.attention === 'mla' && s.ropeBytes === 0) || s.combinedKv ? 1 : 2;
    this.tensorCount = this.numLayers * this.tensorsPerLayer;
    this.blockBytes = this.blockSize * this.numHeads * this.headBytes;
    this.tensorBytes = this.blockBytes * this.numBlocks;
    this.totalBytes = this.numLayers * (this.tensorBytes * (this.attention === 'mha' && !s.combinedKv ? 2 : 1) + this.blockSize * this.ropeBytes * this.numBlocks);
  }

  /** True when tensor `t` is an MLA rope tensor. */
  private isRope(t: number): boolean {
    return this.ropeBytes > 0 && t % 2 === 1;
  }

  /** Bytes per token per head of tensor `t` (headBytes, or ropeBytes for a rope tensor). */
  tensorHeadBytes(t: number): number {
    return this.isRope(t) ? this.ropeBytes : this.headBytes;
  }

  /** Bytes of one block of tensor `t`. */
  tensorBlockBytes(t: number): number {
    return this.isRope(t) ? this.blockSize * this.ropeBytes : this.blockBytes;
  }

  /** Bytes of tensor `t` (all its blocks). */
  tensorSize(t: number): number {
    return this.tensorBlockBytes(t) * this.numBlocks;
  }

  /** Validates a spec; every invalid field is an INVALID_CONFIG error naming it. */
  static from(spec: KvLayoutSpec | KvLayout): KvLayout {
    if (spec instanceof KvLayout) return spec;
    if (spec === null || typeof spec !== 'object') throw new MooncakeError('INVALID_CONFIG', 'layout must be an object');
    const attention = spec.attention ?? 'mha';
    if (attention !== 'mha' && attention !== 'mla') throw bad('attention', attention, "'mha' or 'mla'");
    const headLayout = spec.headLayout ?? 'NHD';
    if (headLayout !== 'NHD' && headLayout !== 'HND') throw bad('headLayout', headLayout, "'NHD' or 'HND'");
    const numLayers = positiveInt('numLayers', spec.numLayers);
    const numBlocks = positiveInt('numBlocks', spec.numBlocks);
    const blockSize = positiveInt('blockSize', spec.blockSize);
    const headBytes = positiveInt('headBytes', spec.headBytes);
    const numHeads = spec.numHeads === undefined && attention === 'mla' ? 1 : positiveInt('numHeads', spec.numHeads);
    if (attention === 'mla' && numHeads !== 1) throw bad('numHeads', numHeads, '1 for MLA (one latent per token)');
    const ropeBytes = spec.ropeBytes === undefined ? 0 : positiveInt('ropeBytes', spec.ropeBytes);
    if (ropeBytes > 0 && attention !== 'mla') throw bad('ropeBytes', ropeBytes, "unset for 'mha' (a rope tensor is MLA's)");
    const combinedKv = spec.combinedKv ?? false;
    if (typeof combinedKv !== 'boolean') throw bad('combinedKv', combinedKv, 'a boolean');
    if (combinedKv && attention !== 'mha') throw bad('combinedKv', combinedKv, "unset for 'mla' (MLA has no K and V)");
    const blockBytes = blockSize * numHeads * headBytes;
    const total = (blockBytes * (attention === 'mla' || combinedKv ? 1 : 2) + blockSize * ropeBytes) * numBlocks * numLayers;
    if (!Number.isSafeInteger(total) || total > MAX_BYTES) {
      throw new MooncakeError('INVALID_CONFIG', `layout is too large (${total} bytes)`, { details: { field: 'layout' } });
    }
    return new KvLayout({ attention, numLayers, numBlocks, blockSize, headBytes, numHeads, headLayout, ropeBytes, combinedKv });
  }

  static fromJSON(j: KvLayoutJson): KvLayout {
    return KvLayout.from({
      attention: j.attention,
      numLayers: j.num_layers,
      numBlocks: j.num_blocks,
      blockSize: j.block_size,
      headBytes: j.head_bytes,
      numHeads: j.num_heads,
      headLayout: j.head_layout,
      ...(j.rope_bytes !== undefined ? { ropeBytes: j.rope_bytes } : {}),
      ...(j.combined_kv === true ? { combinedKv: true } : {}),
    });
  }

  toJSON(): KvLayoutJson {
    return {
      attention: this.attention,
      num_layers: this.numLayers,
      num_blocks: this.numBlocks,
      block_size: this.blockSize,
      head_bytes: this.headBytes,
      num_heads: this.numHeads,
      head_layout: this.headLayout,
      ...(this.ropeBytes > 0 ? { rope_bytes: this.ropeBytes } : {}),
      ...(this.combinedKv ? { combined_kv: true } : {}),
    };
  }

  /** The tensor index of (layer, kind). */
  tensorIndex(layer: number, kind: KvTensorKind): number {
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers) {
      throw new MooncakeError('INVALID_ARGUMENT', `layer ${layer} is outside [0, ${this.numLayers})`);
    }
    if (this.attention === 'mla') {
      if (this.ropeBytes > 0 && (kind === 'latent' || kind === 'rope')) return 2 * layer + (kind === 'rope' ? 1 : 0);
      if (kind !== 'latent') throw new MooncakeError('INVALID_ARGUMENT', `this MLA layout has ${this.ropeBytes > 0 ? "'latent' and 'rope' tensors" : "one 'latent' tensor"} per layer, not '${kind}'`);
      return layer;
    }
    if (this.combinedKv) {
      if (kind === 'kv') return layer;
      throw new MooncakeError('INVALID_ARGUMENT', `this MHA layout has one 'kv' tensor per layer (combinedKv), not '${kind}'`);
    }
    if (kind === 'k') return 2 * layer;
    if (kind === 'v') return 2 * layer + 1;
    throw new MooncakeError('INVALID_ARGUMENT', `an MHA layout has 'k' and 'v' tensors, not '${kind}'`);
  }

  /** (layer, kind) of a tensor index. */
  tensorAt(index: number): { layer: number; kind: KvTensorKind } {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.tensorCount) {
      throw new MooncakeError('INVALID_ARGUMENT', `tensor ${index} is outside [0, ${this.tensorCount})`);
    }
    if (this.attention === 'mla') return this.ropeBytes > 0 ? { layer: index >> 1, kind: index % 2 === 0 ? 'latent' : 'rope' } : { layer: index, kind: 'latent' };
    if (this.combinedKv) return { layer: index, kind: 'kv' };
    return { layer: index >> 1, kind: index % 2 === 0 ? 'k' : 'v' };
  }

  /** Byte range of a block inside its tensor (`tensor` matters for MLA rope tensors only). */
  blockRange(blockId: number, tensor = 0): ByteRange {
    this.checkBlock(blockId);
    const bb = this.tensorBlockBytes(tensor);
    return { offset: blockId * bb, length: bb };
  }

  /** Byte range of `count` consecutive blocks from `start` inside a tensor. */
  blocksRange(start: number, count: number): ByteRange {
    this.checkBlock(start);
    if (!Number.isSafeInteger(count) || count <= 0 || start + count > this.numBlocks) {
      throw new MooncakeError('INVALID_ARGUMENT', `blocks [${start}, ${start}+${count}) are outside [0, ${this.numBlocks})`);
    }
    return { offset: start * this.blockBytes, length: count * this.blockBytes };
  }

  /**
   * The pieces of a block that hold heads [headStart, headStart + headCount) of this rank, as offsets from
   * the block start: one piece with HND (or when all heads are taken), `blockSize` pieces with NHD.
   */
  headRanges(headStart: number, headCount: number): ByteRange[] {
    this.checkHeads(headStart, headCount);
    const hb = this.headBytes;
    if (headCount === this.numHeads) return [{ offset: 0, length: this.blockBytes }];
    if (this.headLayout === 'HND') return [{ offset: headStart * this.blockSize * hb, length: headCount * this.blockSize * hb }];
    const out: ByteRange[] = new Array(this.blockSize);
    for (let t = 0; t < this.blockSize; t++) out[t] = { offset: (t * this.numHeads + headStart) * hb, length: headCount * hb };
    return out;
  }

  /** Offset of (token, head) inside a block. */
  tokenHeadOffset(token: number, head: number): number {
    if (this.headLayout === 'HND') return (head * this.blockSize + token) * this.headBytes;
    return (token * this.numHeads + head) * this.headBytes;
  }

  /** Why `other` cannot exchange blocks with this layout, or undefined when it can. */
  incompatibility(other: KvLayout): string | undefined {
    if (other.attention !== this.attention) return `attention ${this.attention} vs ${other.attention}`;
    if (other.numLayers !== this.numLayers) return `numLayers ${this.numLayers} vs ${other.numLayers}`;
    if (other.blockSize !== this.blockSize) return `blockSize ${this.blockSize} vs ${other.blockSize}`;
    if (other.headBytes !== this.headBytes) return `headBytes ${this.headBytes} vs ${other.headBytes}`;
    if (other.ropeBytes !== this.ropeBytes) return `ropeBytes ${this.ropeBytes} vs ${other.ropeBytes}`;
    if (other.combinedKv !== this.combinedKv) return `combinedKv ${this.combinedKv} vs ${other.combinedKv}`;
    return undefined;
  }

  /** Throws INVALID_ARGUMENT unless `blockId` is a block of this layout. */
  checkBlock(blockId: number): void {
    if (!Number.isSafeInteger(blockId) || blockId < 0 || blockId >= this.numBlocks) {
      throw new MooncakeError('INVALID_ARGUMENT', `block id ${String(blockId)} is outside [0, ${this.numBlocks})`);
    }
  }

  private checkHeads(start: number, count: number): void {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count <= 0 || start + count > this.numHeads) {
      throw new MooncakeError('INVALID_ARGUMENT', `heads [${start}, ${start}+${count}) are outside [0, ${this.numHeads})`);
    }
  }
}

/** Splits block ids into runs of consecutive ids, in order: [3,4,5,9,10,2] → (3,3) (9,2) (2,1). */
export function blockRuns(ids: readonly number[]): BlockRun[] {
  const out: BlockRun[] = [];
  for (const id of ids) {
    const last = out[out.length - 1];
    if (last && id === last.start + last.count) last.count++;
    else out.push({ start: id, count: 1 });
  }
  return out;
}

/**
 * Pairs local and remote block ids (same length) into runs where both sides are consecutive (vllm-ascend's
 * group_concurrent_contiguous): each run is one range per tensor when whole blocks move.
 */
export function pairedRuns(local: readonly number[], remote: readonly number[]): PairedRun[] {
  if (local.length !== remote.length) {
    throw new MooncakeError('INVALID_ARGUMENT', `local and remote block lists differ in length (${local.length} vs ${remote.length})`);
  }
  const out: PairedRun[] = [];
  for (let i = 0; i < local.length; i++) {
    const last = out[out.length - 1];
    if (last && local[i] === last.local + last.count && remote[i] === last.remote + last.count) last.count++;
    else out.push({ index: i, local: local[i], remote: remote[i], count: 1 });
  }
  return out;
}
