// The simulated model both workers agree on: its KV-cache shape per rank, and prompt → tokens.
export const MODEL = {
  name: 'simulated-gqa-8l',
  numLayers: 8,
  totalKvHeads: 8,
  headDim: 128,
  dtypeBytes: 2, // fp16
  blockSize: 16, // tokens per block
  numBlocks: 512, // per rank
};

/** The KV layout of one rank of a group with this TP size (GQA heads sharded over TP). */
export function layoutFor(tpSize) {
  return {
    attention: 'mha',
    numLayers: MODEL.numLayers,
    numBlocks: MODEL.numBlocks,
    blockSize: MODEL.blockSize,
    headBytes: MODEL.headDim * MODEL.dtypeBytes,
    numHeads: MODEL.totalKvHeads / tpSize,
    headLayout: 'NHD',
  };
}

/** KV bytes of one token on one rank. */
export function kvBytesPerToken(tpSize) {
  return MODEL.numLayers * 2 * (MODEL.totalKvHeads / tpSize) * MODEL.headDim * MODEL.dtypeBytes;
}

/** Prompt tokens, estimated as UTF-8 bytes / 4 (like the proxy's estimate). */
export function promptTokens(body) {
  const p = body.prompt ?? (Array.isArray(body.messages) ? body.messages.map((m) => m.content ?? '').join(' ') : '');
  const text = Array.isArray(p) ? p.join(' ') : String(p);
  return Math.max(1, Math.ceil(Buffer.byteLength(text, 'utf8') / 4));
}

/** A paged block pool: allocations wait while the pool is exhausted (like vLLM's scheduler would). */
export class BlockPool {
  constructor(n) {
    this.free = Array.from({ length: n }, (_, i) => i);
    this.waiters = [];
  }
  allocate(n) {
    if (n > MODEL.numBlocks) return Promise.reject(new Error(`a request of ${n} blocks cannot fit ${MODEL.numBlocks}`));
    return new Promise((resolve) => {
      this.waiters.push({ n, resolve });
      this.pump();
    });
  }
  release(ids) {
    this.free.push(...ids);
    this.pump();
  }
  pump() {
    while (this.waiters.length > 0 && this.waiters[0].n <= this.free.length) {
      const w = this.waiters.shift();
      w.resolve(this.free.splice(0, w.n));
    }
  }
}
