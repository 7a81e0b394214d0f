/**
 * Which prefill TP ranks a decode TP rank takes its KV from, and which head slices.
 *
 * Heads are numbered globally (the model's KV heads). A rank of a group with TP size `tp` holds
 * - with MHA/GQA and `tp <= heads`: heads [rank·heads/tp, (rank+1)·heads/tp) (vLLM's sharding);
 * - with MHA/GQA and `tp > heads`: the single head ⌊rank / (tp/heads)⌋ (heads replicated over tp/heads ranks);
 * - with MLA: the whole latent (every rank holds the same data).
 *
 * A decode rank walks its heads and takes each from the prefill rank that holds it. When several prefill
 * ranks hold a head (MLA, or prefill TP > heads) the replica is chosen from a hash of the request id plus
 * the decode rank, so prefill and decode agree without exchanging messages and different decode ranks
 * spread over different prefill ranks. With `selection: 'vllm-ascend'` the replica is the one vllm-ascend's
 * MooncakeConnector picks: equal TP maps rank r to rank r, otherwise CPython's `random.Random(h).sample` over
 * the replica groups, h being the request id's 64-bit SHA-256 prefix (the prefill frees the blocks of the
 * ranks that choice leaves out, so the decode must make the same one). With `selection: 'vllm'` the mapping
 * is vLLM's own MooncakeConnector's: a decode rank exchanges messages with the prefill ranks
 * `[d·r, …, d·r + r − 1]` (prefill TP = r × decode TP) or `[⌊d / r⌋]` (decode TP = r × prefill TP), and
 * takes each head from the first of them that holds it; decode TP may then also be a multiple of prefill TP.
 * Consecutive heads served by one prefill rank form one slice. Prefill TP must be a multiple of decode TP
 * (or, with 'vllm', one of the two a multiple of the other).
 */
import { createHash } from 'node:crypto';
import { MooncakeError } from '../errors';
import type { KvAttention } from './layout';
import { PyRandom, stringToInt64Hash } from './py-random';

/**
 * How a replica is chosen when several prefill ranks hold a head: mooncake-node's hash, vllm-ascend's RNG, or
 * vLLM's first-target rule.
 */
export type RankSelection = 'mooncake-node' | 'vllm-ascend' | 'vllm';

export interface TpMapping {
  attention: KvAttention;
  /** The model's KV heads (ignored for MLA). */
  totalHeads: number;
  prefillTp: number;
  decodeTp: number;
  /** Default 'mooncake-node'. */
  selection?: RankSelection;
}

/** A contiguous run of global heads held by one rank. */
export interface HeadSpan {
  start: number;
  count: number;
}

/** One piece a decode rank gathers: heads from one prefill rank. */
export interface HeadSlice {
  prefillRank: number;
  decodeRank: number;
  /** First head of the slice among the decode rank's own heads. */
  decodeHead: number;
  /** First head of the slice among the prefill rank's own heads. */
  prefillHead: number;
  count: number;
}

function invalid(message: string, details: Record<string, unknown>): MooncakeError {
  return new MooncakeError('INVALID_CONFIG', message, { details });
}

/** Throws INVALID_CONFIG unless the two TP sizes and the head count can be mapped onto each other. */
export function validateTpMapping(m: TpMapping): void {
  const { prefillTp, decodeTp, totalHeads, attention } = m;
  for (const [name, v] of [['prefill tp_size', prefillTp], ['decode tp_size', decodeTp]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) throw invalid(`${name} must be a positive integer, got ${String(v)}`, { field: name, value: v });
  }
  const vllmDecodeWider = m.selection === 'vllm' && decodeTp > prefillTp && decodeTp % prefillTp === 0;
  if (!vllmDecodeWider && (prefillTp < decodeTp || prefillTp % decodeTp !== 0)) {
    throw invalid(
      `prefill tp_size (${prefillTp}) must be a multiple of decode tp_size (${decodeTp}): a decode rank gathers its heads from whole prefill ranks`,
      { field: 'tp_size', prefillTp, decodeTp },
    );
  }
  if (attention === 'mla') return;
  if (!Number.isSafeInteger(totalHeads) || totalHeads <= 0) {
    throw invalid(`totalKvHeads must be a positive integer, got ${String(totalHeads)}`, { field: 'totalKvHeads', value: totalHeads });
  }
  for (const [name, tp] of [['prefill', prefillTp], ['decode', decodeTp]] as const) {
    if (tp <= totalHeads ? totalHeads % tp !== 0 : tp % totalHeads !== 0) {
      throw invalid(`${name} tp_size ${tp} does not shard ${totalHeads} KV heads evenly (one must divide the other)`, {
        field: `${name}.tp_size`,
        tp,
        totalHeads,
      });
    }
  }
}

/** The global heads a rank holds (MLA: the single latent "head" 0). */
export function heldHeads(attention: KvAttention, totalHeads: number, tp: number, rank: number): HeadSpan {
  if (attention === 'mla') return { start: 0, count: 1 };
  if (tp <= totalHeads) {
    const per = totalHeads / tp;
    return { start: rank * per, count: per };
  }
  return { start: Math.floor(rank / (tp / totalHeads)), count: 1 };
}

/** A stable 32-bit hash of a request id (the first 4 bytes of its SHA-256). */
export function requestHash(requestId: string): number {
  return createHash('sha256').update(requestId, 'utf8').digest().readUInt32BE(0);
}

let lastSample: { key: string; chosen: number[] } | undefined;

/** The groups vllm-ascend samples for a request (the last answer is kept: every rank of a request asks). */
function vllmAscendSample(requestId: string, groups: number, k: number): number[] {
  const key = `${groups}|${k}|${requestId}`;
  if (lastSample?.key !== key) lastSample = { key, chosen: new PyRandom(stringToInt64Hash(requestId)).sample(groups, k) };
  return lastSample.chosen;
}

/**
 * Which of `n` replicas (prefill ranks holding the same head) decode rank `decodeRank` reads. vllm-ascend:
 * `random.Random(h).sample(range(groups), max(decodeTp / heads, 1))[decodeRank % k]`, where each head's
 * replicas are the groups (the rank of group g for head i is i × groups + g; MLA counts as one head).
 */
function replicaChooser(requestId: string, m: TpMapping, decodeRank: number): (n: number) => number {
  if (m.selection === 'vllm-ascend') {
    if (m.prefillTp === m.decodeTp) return (n) => decodeRank % n;
    const heads = m.attention === 'mla' ? 1 : m.totalHeads;
    const groups = Math.max(1, Math.floor(m.prefillTp / heads));
    const k = Math.max(Math.floor(m.decodeTp / heads), 1);
    const chosen = vllmAscendSample(requestId, groups, k);
    return () => chosen[decodeRank % k];
  }
  const hash = requestHash(requestId);
  return (n) => (hash + decodeRank) % n;
}

/**
 * The prefill ranks vLLM's MooncakeConnector has decode rank `decodeRank` send its transfer request to (its
 * TransferTopology.handshake_target_ranks): every one answers, even those that write nothing.
 */
export function vllmTargetRanks(m: Pick<TpMapping, 'prefillTp' | 'decodeTp'>, decodeRank: number): number[] {
  if (m.decodeTp >= m.prefillTp) return [Math.floor(decodeRank / (m.decodeTp / m.prefillTp))];
  const r = m.prefillTp / m.decodeTp;
  return [...Array(r).keys()].map((i) => decodeRank * r + i);
}

/** The decode ranks that send vLLM transfer requests to prefill rank `prefillRank` (the inverse of vllmTargetRanks). */
export function vllmRequesters(m: Pick<TpMapping, 'prefillTp' | 'decodeTp'>, prefillRank: number): number[] {
  if (m.prefillTp >= m.decodeTp) return [Math.floor(prefillRank / (m.prefillTp / m.decodeTp))];
  const r = m.decodeTp / m.prefillTp;
  return [...Array(r).keys()].map((i) => prefillRank * r + i);
}

/** vLLM's source of `head` for decode rank `decodeRank`: the first of its target ranks holding the head. */
function vllmSource(m: TpMapping, decodeRank: number, head: number): number {
  for (const t of vllmTargetRanks(m, decodeRank)) {
    const held = heldHeads(m.attention, m.totalHeads, m.prefillTp, t);
    if (head >= held.start && head < held.start + held.count) return t;
  }
  throw new MooncakeError('INVALID_CONFIG', `no prefill rank decode rank ${decodeRank} talks to holds head ${head} (prefill tp ${m.prefillTp}, decode tp ${m.decodeTp}, ${m.totalHeads} heads)`);
}

/** The slices decode rank `decodeRank` gathers for a request, in its head order. */
export function sourcesForDecodeRank(requestId: string, m: TpMapping, decodeRank: number): HeadSlice[] {
  if (!Number.isSafeInteger(decodeRank) || decodeRank < 0 || decodeRank >= m.decodeTp) {
    throw new MooncakeError('INVALID_ARGUMENT', `decode rank ${decodeRank} is outside [0, ${m.decodeTp})`);
  }
  const mine = heldHeads(m.attention, m.totalHeads, m.decodeTp, decodeRank);
  let pick: ((n: number) => number) | undefined;
  const replica = (n: number): number => {
    pick ??= replicaChooser(requestId, m, decodeRank);
    return pick(n);
  };
  const out: HeadSlice[] = [];
  for (let i = 0; i < mine.count; i++) {
    const head = mine.start + i;
    let prefillRank: number;
    if (m.selection === 'vllm') prefillRank = vllmSource(m, decodeRank, head);
    else if (m.attention === 'mla') prefillRank = replica(m.prefillTp);
    else if (m.prefillTp <= m.totalHeads) prefillRank = Math.floor(head / (m.totalHeads / m.prefillTp));
    else {
      const reps = m.prefillTp / m.totalHeads;
      prefillRank = head * reps + replica(reps);
    }
    const prefillHead = head - heldHeads(m.attention, m.totalHeads, m.prefillTp, prefillRank).start;
    const last = out[out.length - 1];
    if (last && last.prefillRank === prefillRank && last.decodeHead + last.count === i && last.prefillHead + last.count === prefillHead) last.count++;
    else out.push({ prefillRank, decodeRank, decodeHead: i, prefillHead, count: 1 });
  }
  return out;
}

/** The slices prefill rank `prefillRank` serves for a request, over all decode ranks (empty: not chosen). */
export function targetsForPrefillRank(requestId: string, m: TpMapping, prefillRank: number): HeadSlice[] {
  if (!Number.isSafeInteger(prefillRank) || prefillRank < 0 || prefillRank >= m.prefillTp) {
    throw new MooncakeError('INVALID_ARGUMENT', `prefill rank ${prefillRank} is outside [0, ${m.prefillTp})`);
  }
  const out: HeadSlice[] = [];
  for (let d = 0; d < m.decodeTp; d++) {
    for (const s of sourcesForDecodeRank(requestId, m, d)) if (s.prefillRank === prefillRank) out.push(s);
  }
  return out;
}

/** The distinct prefill ranks of a list of slices, in first-seen order. */
export function prefillRanksOf(slices: readonly HeadSlice[]): number[] {
  return [...new Set(slices.map((s) => s.prefillRank))];
}

/** The slices grouped by the rank (of the other side) they are moved with, in first-seen order. */
export function slicesByRank(slices: readonly HeadSlice[], rank: 'prefillRank' | 'decodeRank'): Map<number, HeadSlice[]> {
  const groups = new Map<number, HeadSlice[]>();
  for (const s of slices) {
    const list = groups.get(s[rank]) ?? [];
    list.push(s);
    groups.set(s[rank], list);
  }
  return groups;
}
