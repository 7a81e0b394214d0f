import type { TransferEngine } from '../engine';
import type { MemoryRegion } from '../engine/memory';
import type { TransferEngineOptions } from '../engine/options';
import type { BenchOptions } from './options';

/** The engine knobs every bench side (initiator, target, loopback) takes from the command line. */
export function benchEngineOptions(o: BenchOptions): Pick<TransferEngineOptions, 'ioThreads' | 'connectionsPerPeer' | 'sameHostFastPath' | 'metricsMaxPeers'> {
  return { ioThreads: o.ioThreads, connectionsPerPeer: o.connectionsPerPeer, sameHostFastPath: o.sameHost, metricsMaxPeers: o.metricsMaxPeers };
}

/** The buffer a bench side moves bytes in and out of: engine-allocated shared memory with --managed, else a registered Buffer. */
export function benchBuffer(engine: TransferEngine, o: BenchOptions): Promise<MemoryRegion> {
  return o.managed ? engine.allocateManagedBuffer(o.bufferSize) : engine.registerMemory(Buffer.alloc(o.bufferSize));
}
