import { EventEmitter } from 'node:events';
import type { MooncakeError } from '../errors';
import type { KvCaches } from './caches';
import type { KvLayout } from './layout';
import type { KvTransferParams } from './params';
import type { KvRankCore } from './rank';

/** What KvProducer and KvConsumer share: the rank core behind them, its identity, warnings, disposal. */
export abstract class KvRankBase<Events extends Record<keyof Events, unknown[]> & { warning: [error: MooncakeError] }> extends EventEmitter<Events> {
  protected core!: KvRankCore;
  /** Which group this rank belongs to: prefill (producer) or decode (consumer). */
  protected abstract readonly side: 'prefill' | 'decode';

  get engine(): KvRankCore['engine'] {
    return this.core.engine;
  }
  get caches(): KvCaches {
    return this.core.caches;
  }
  get layout(): KvLayout {
    return this.core.options.layout;
  }
  get engineId(): string {
    return this.core.options.engineId;
  }
  get dpRank(): number {
    return this.core.options.dpRank;
  }
  get tpRank(): number {
    return this.core.options.tpRank;
  }
  /** This rank's key in the metadata backend. */
  get registryKey(): string {
    return this.core.registryKey;
  }

  /**
   * The kv_transfer_params naming this rank for a request (what `hold` / `expect` return): its engine id,
   * host, kv port (kv_port + dp_rank × tp_size, vllm-ascend's rule) and dp rank, and the block ids.
   */
  transferParams(requestId: string, blockIds: readonly number[]): KvTransferParams {
    const o = this.core.options;
    const tpSize = o[this.side].tpSize;
    return {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_engine_id: o.engineId,
      remote_host: this.core.engine.advertiseAddress,
      remote_port: o.kvPort !== undefined ? o.kvPort + o.dpRank * tpSize : this.core.engine.rpcPort,
      remote_block_ids: [...blockIds],
      remote_request_id: requestId,
      remote_dp_rank: o.dpRank,
      remote_tp_size: tpSize,
      remote_total_kv_heads: o.totalKvHeads,
    };
  }

  /** Background problems go to 'warning' listeners when there are any (never an unhandled 'error'). */
  protected warn(e: MooncakeError): void {
    const emitter = this as unknown as EventEmitter;
    if (emitter.listenerCount('warning') > 0) emitter.emit('warning', e);
  }

  abstract close(): Promise<void>;

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
