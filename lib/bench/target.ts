import { TransferEngine } from '../engine';
import { benchBuffer, benchEngineOptions } from './engine';
import type { BenchOptions } from './options';
import { CpuMeter } from './stats';

/**
 * Target mode: register a buffer, announce readiness, serve until SIGINT/SIGTERM (or until stdin
 * closes, when a parent process drives us), then print this process's CPU use and close.
 */
export async function runTarget(o: BenchOptions, log: (s: string) => void): Promise<void> {
  const engine = await TransferEngine.create({
    metadataServer: o.metadataServer!,
    localServerName: o.localServerName,
    ...benchEngineOptions(o),
    ...(process.env.MC_TCP_BIND_ADDRESS ? {} : { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' }),
  });
  const region = await benchBuffer(engine, o);
  const cpu = new CpuMeter();
  const ready = { ready: true, segment: engine.localServerName, address: region.address.toString(), bufferSize: region.length, dataPort: engine.dataPort, pid: process.pid };
  if (o.json) process.stdout.write(JSON.stringify(ready) + '\n');
  else log(`target ready: segment ${engine.localServerName}, ${region.length} bytes at 0x${region.address.toString(16)}; Ctrl-C to stop`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
    if (!process.stdin.isTTY) {
      process.stdin.resume();
      process.stdin.once('end', resolve);
      process.stdin.once('close', resolve);
    }
  });
  const stats = engine.stats();
  const out = { done: true, cpuPercent: cpu.percent(), bytesReceived: stats.bytesReceived, bytesSent: stats.bytesSent, requestsServed: stats.requestsServed };
  if (o.json) process.stdout.write(JSON.stringify(out) + '\n');
  else log(`target served ${stats.requestsServed} requests, cpu ${out.cpuPercent.toFixed(0)}%`);
  await engine.close();
  process.stdin.pause();
}
