/** Picks the side channel (side-channel.ts) a rank's options select. */
import { MooncakeError } from '../errors';
import { MooncakeNodeChannel } from './mooncake-channel';
import type { KvRankOptions, ResolvedKvOptions } from './options';
import type { KvSideChannel } from './side-channel';
import { VllmAscendChannel } from './vllm-ascend/channel';
import { VllmChannel } from './vllm/channel';

/** The side channel a rank's options select. */
export function createSideChannel(o: ResolvedKvOptions, raw: KvRankOptions, side: 'prefill' | 'decode'): KvSideChannel {
  switch (o.sideChannel) {
    case 'mooncake-node':
      return MooncakeNodeChannel.create(o, raw, side);
    case 'vllm-ascend':
      return VllmAscendChannel.create(o, raw, side);
    case 'vllm':
      return VllmChannel.create(o, raw, side);
    default:
      throw new MooncakeError('INVALID_CONFIG', `unknown side channel ${String(o.sideChannel)}`);
  }
}
