import { EventEmitter } from 'node:events';
import type { MooncakeError } from '../errors';
import type { KvCaches } from './caches';
import type { KvLayout } from './layout';
import type { KvRankCore } from './rank';

/** What KvProducer and KvConsumer share: the rank core behind them, its identity, warnings, disposal. */
export abstract class KvRankBase<Events extends Record<keyof Events, unknown[]> & { warning: [error: MooncakeError] }> extends EventEmitter<Events> {
  protected core!: KvRankCore;

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
