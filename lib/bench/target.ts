import { TransferEngine } from '../engine';
import { benchBuffer, benchEngineOptions } from './engine';
import { untilStopped, type BenchIO } from './io';
import type { BenchOptions } from './options';
import { CpuMeter } from './stats';

/**
 * Target mode: register a buffer, announce readiness, serve until SIGINT/SIGTERM (the command's signal)
 * or, when a parent drives this process (`untilStdinCloses`), until stdin closes; then print this
 * process's CPU use and close. A parent that went away must not turn the last line into an EPIPE stack.
 */
export async function runTarget(o: BenchOptions, io: BenchIO, untilStdinCloses = false): Promise<void> {
  let stopper: ReturnType<typeof untilStopped> | undefined;
  const engine = await TransferEngine.create({
    metadataServer: o.metadataServer!,
    localServerName: o.localServerName,
    ...benchEngineOptions(o),
    ...(process.env.MC_TCP_BIND_ADDRESS ? {} : { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' }),
  });
  try {
    const region = await benchBuffer(engine, o);
    const cpu = new CpuMeter();
    const ready = { ready: true, segment: engine.localServerName, address: region.address.toString(), bufferSize: region.length, dataPort: engine.dataPort, pid: process.pid };
    if (o.json) io.out(JSON.stringify(ready));
    else io.log(`target ready: segment ${engine.localServerName}, ${region.length} bytes at 0x${region.address.toString(16)}; Ctrl-C to stop`);
    const stop = untilStopped(io.signal, untilStdinCloses);
    stopper = stop;
    await stop.stopped;
    const stats = engine.stats();
    const out = { done: true, cpuPercent: cpu.percent(), bytesReceived: stats.bytesReceived, bytesSent: stats.bytesSent, requestsServed: stats.requestsServed };
    if (o.json) io.out(JSON.stringify(out));
    else io.log(`target served ${stats.requestsServed} requests, cpu ${out.cpuPercent.toFixed(0)}%`);
  } finally {
    await engine.close();
    stopper?.release();
  }
}
