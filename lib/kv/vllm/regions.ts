/**
 * The registered KV regions of vLLM's MooncakeConnector, against mooncake-node layouts. vLLM registers one
 * region per attention layer, named by its layer name: the layer's page tensor, `block_len` bytes from block
 * to block with a `kv_block_len`-byte payload. With the LBHNC layout the connector asks for, a page is
 * `[heads][block_size][K|V]`: a mooncake-node layout with `combinedKv` and `headLayout: 'HND'`, `headBytes`
 * covering K and V (MLA: one latent tensor per layer). Regions are matched by layer name, as vLLM aligns them.
 */
import { MooncakeError } from '../../errors';
import { KvLayout } from '../layout';
import { layerIndexOf, type XferRegion } from './wire';

/** Why a layout cannot pair with vLLM's MooncakeConnector, or undefined when it can. */
export function vllmLayoutProblem(l: KvLayout): string | undefined {
  if (l.tensorsPerLayer !== 1) {
    return l.attention === 'mla'
      ? 'vLLM registers one MLA tensor per layer (latent and rope together): give headBytes for both, without ropeBytes'
      : 'vLLM registers one K|V page per layer: set layout.combinedKv (headBytes = K and V bytes of a head and token) and headLayout HND';
  }
  if (l.attention === 'mha' && l.headLayout !== 'HND') return "vLLM's MooncakeConnector uses the LBHNC page layout: set layout.headLayout to 'HND'";
  return undefined;
}

/** This rank's regions as it announces them: one per layer, in layer order. */
export function ownRegions(layout: KvLayout, tensors: readonly bigint[], layerNames: readonly string[]): XferRegion[] {
  return layerNames.map((name, l) => ({
    base: tensors[l],
    blockLen: layout.tensorBlockBytes(l),
    kvBlockLen: layout.tensorBlockBytes(l),
    layerName: name,
    layerIndex: layerIndexOf(name, l),
    groupIndex: 0,
    rowOffset: -1,
  }));
}

/**
 * The layout and tensor addresses of a peer that announced `regions`, given the layout it must have
 * (`expected`: this rank's layout with the peer's head count). INVALID_CONFIG when a layer is missing or its
 * block lengths disagree, so a mismatched model is an error, not garbage.
 */
export function peerFromRegions(regions: readonly XferRegion[], layerNames: readonly string[], expected: KvLayout, numBlocks: number | undefined, who: string): { layout: KvLayout; tensors: bigint[] } {
  const mismatch = (what: string): MooncakeError => new MooncakeError('INVALID_CONFIG', `${who}: ${what}`, { details: { peer: who } });
  const byName = new Map<string, XferRegion>();
  for (const r of regions) if (!byName.has(r.layerName)) byName.set(r.layerName, r);
  const want = expected.tensorBlockBytes(0);
  const tensors = layerNames.map((name, l) => {
    const r = byName.get(name);
    if (!r) throw mismatch(`no region for layer '${name}' (it registered ${[...byName.keys()].slice(0, 3).join(', ')}${byName.size > 3 ? ', ...' : ''}): name the layers alike on both sides`);
    if (r.layerIndex !== layerIndexOf(name, l)) throw mismatch(`layer '${name}' has index ${r.layerIndex}, here ${layerIndexOf(name, l)}`);
    if (r.groupIndex !== 0) throw mismatch(`layer '${name}' is in KV-cache group ${r.groupIndex}; one group (full attention) is supported`);
    if (r.kvBlockLen !== want) throw mismatch(`layer '${name}' has ${r.kvBlockLen}-byte blocks, expected ${want} (${expected.numHeads} heads × ${expected.blockSize} tokens × ${expected.headBytes} bytes)`);
    if (r.blockLen !== r.kvBlockLen) throw mismatch(`layer '${name}' has padded pages (stride ${r.blockLen}, payload ${r.kvBlockLen}); only unpadded pages are supported`);
    return r.base;
  });
  const layout = KvLayout.from({
    attention: expected.attention,
    numLayers: expected.numLayers,
    // vLLM does not announce the block count: the peer's blocks are trusted to exist, as vLLM does.
    numBlocks: numBlocks ?? expected.numBlocks,
    blockSize: expected.blockSize,
    headBytes: expected.headBytes,
    numHeads: expected.numHeads,
    headLayout: expected.headLayout,
    ...(expected.combinedKv ? { combinedKv: true } : {}),
  });
  return { layout, tensors };
}
