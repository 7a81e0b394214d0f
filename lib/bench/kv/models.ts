/**
 * Model presets for `bench kv`: the KV-cache shapes of real models, and the per-rank layouts a
 * prefill or decode instance of a given TP size holds.
 */
import { MooncakeError } from '../../errors';
import type { KvHeadLayout, KvLayoutSpec } from '../../kv/layout';

export interface KvModel {
  name: string;
  description: string;
  attention: 'mha' | 'mla';
  layers: number;
  /** KV heads of the model (MLA: 1, the latent). */
  kvHeads: number;
  /** Head dimension (MLA: the latent width, kv_lora_rank). */
  headDim: number;
  /** MLA: the rope part kept next to the latent (qk_rope_head_dim); 0 for none. */
  ropeDim: number;
  /** Bytes per element (bf16: 2). */
  dtypeBytes: number;
}

export const KV_MODELS: Readonly<Record<string, KvModel>> = {
  'deepseek-v2-lite': {
    name: 'deepseek-v2-lite',
    description: 'DeepSeek-V2-Lite, MLA: 27 layers, latent 512 + rope 64, bf16',
    attention: 'mla',
    layers: 27,
    kvHeads: 1,
    headDim: 512,
    ropeDim: 64,
    dtypeBytes: 2,
  },
  'llama3-8b': {
    name: 'llama3-8b',
    description: 'Llama-3-8B-like GQA: 32 layers, 8 KV heads x 128, bf16',
    attention: 'mha',
    layers: 32,
    kvHeads: 8,
    headDim: 128,
    ropeDim: 0,
    dtypeBytes: 2,
  },
  'qwen2.5-7b': {
    name: 'qwen2.5-7b',
    description: 'Qwen2.5-7B-like GQA: 28 layers, 4 KV heads x 128, bf16',
    attention: 'mha',
    layers: 28,
    kvHeads: 4,
    headDim: 128,
    ropeDim: 0,
    dtypeBytes: 2,
  },
};

export const KV_MODEL_NAMES = [...Object.keys(KV_MODELS), 'custom'] as const;

/** What `--model custom` takes. */
export interface CustomModelSpec {
  attention?: 'mha' | 'mla';
  layers?: number;
  kvHeads?: number;
  headDim?: number;
  ropeDim?: number;
  dtypeBytes?: number;
}

/** A preset by name, or the custom model (every field required but rope and dtype). */
export function kvModel(name: string, custom: CustomModelSpec = {}): KvModel {
  if (name !== 'custom') {
    const m = KV_MODELS[name];
    if (!m) throw new MooncakeError('INVALID_CONFIG', `unknown model '${name}' (presets: ${Object.keys(KV_MODELS).join(', ')}, or custom)`, { details: { flag: '--model', value: name } });
    return m;
  }
  const attention = custom.attention ?? 'mha';
  const need = (v: number | undefined, flag: string): number => {
    if (v === undefined) throw new MooncakeError('INVALID_CONFIG', `--model custom needs ${flag}`, { details: { flag } });
    return v;
  };
  const layers = need(custom.layers, '--layers');
  const headDim = need(custom.headDim, '--head-dim');
  const kvHeads = attention === 'mla' ? 1 : need(custom.kvHeads, '--kv-heads');
  const ropeDim = custom.ropeDim ?? 0;
  const dtypeBytes = custom.dtypeBytes ?? 2;
  if (attention === 'mha' && ropeDim > 0) throw new MooncakeError('INVALID_CONFIG', '--rope-dim is for --attention mla', { details: { flag: '--rope-dim' } });
  const shape = attention === 'mla' ? `latent ${headDim}${ropeDim ? ` + rope ${ropeDim}` : ''}` : `${kvHeads} KV heads x ${headDim}`;
  return { name: 'custom', description: `custom ${attention.toUpperCase()}: ${layers} layers, ${shape}, ${dtypeBytes} B/element`, attention, layers, kvHeads, headDim, ropeDim, dtypeBytes };
}

/** KV bytes one token costs the whole model (all layers, all heads, K and V / latent and rope). */
export function bytesPerToken(m: KvModel): number {
  const perLayer = m.attention === 'mla' ? (m.headDim + m.ropeDim) * m.dtypeBytes : 2 * m.kvHeads * m.headDim * m.dtypeBytes;
  return perLayer * m.layers;
}

/** Heads one rank of a `tp`-way instance holds (replicated when tp exceeds the KV heads; MLA: 1). */
export function headsPerRank(m: KvModel, tp: number): number {
  return m.attention === 'mla' ? 1 : Math.max(1, m.kvHeads / tp);
}

/** The layout of one rank of a `tp`-way instance. */
export function rankLayout(m: KvModel, tp: number, blockSize: number, numBlocks: number, headLayout: KvHeadLayout): KvLayoutSpec {
  if (m.attention === 'mha' && tp < m.kvHeads && m.kvHeads % tp !== 0) {
    throw new MooncakeError('INVALID_CONFIG', `${m.kvHeads} KV heads do not split over tp ${tp}`, { details: { flag: '--prefill-tp/--decode-tp' } });
  }
  return {
    attention: m.attention,
    numLayers: m.layers,
    numBlocks,
    blockSize,
    headBytes: m.headDim * m.dtypeBytes,
    numHeads: headsPerRank(m, tp),
    headLayout,
    ...(m.attention === 'mla' && m.ropeDim > 0 ? { ropeBytes: m.ropeDim * m.dtypeBytes } : {}),
  };
}
