/**
 * Child process of the proxy benchmark, so the load generator, the proxy and the stand-ins do not share one
 * event loop. Run as `node bench-worker.js '<json>'` through child_process.fork:
 *   {"kind":"stand-ins", ...}      starts a prefill and a decode stand-in, sends {prefill, decode} URLs;
 *   {"kind":"proxy", prefill, decode} starts the proxy in front of them, sends {url}.
 * It exits when the parent sends 'close' or disconnects.
 */
import { createProxy } from './server';
import { startStandIn } from './stand-ins';

export type BenchWorkerConfig =
  | { kind: 'stand-ins'; defaultMaxTokens: number }
  | { kind: 'proxy'; prefill: string; decode: string };

export type BenchWorkerReady = { kind: 'stand-ins'; prefill: string; decode: string } | { kind: 'proxy'; url: string };

/** Starts what the config asks for; returns the ready message and a closer. */
export async function startBenchWorker(cfg: BenchWorkerConfig): Promise<{ ready: BenchWorkerReady; close: () => Promise<void> }> {
  if (cfg.kind === 'stand-ins') {
    const common = { record: false, splitWrites: false, defaultMaxTokens: cfg.defaultMaxTokens };
    const prefill = await startStandIn({ role: 'prefill', ...common });
    const decode = await startStandIn({ role: 'decode', ...common });
    return {
      ready: { kind: 'stand-ins', prefill: prefill.url, decode: decode.url },
      close: async () => {
        await Promise.all([prefill.close(), decode.close()]);
      },
    };
  }
  const proxy = createProxy({ port: 0, prefill: [cfg.prefill], decode: [cfg.decode], shutdownGraceMs: 0 });
  const addr = await proxy.listen();
  return { ready: { kind: 'proxy', url: addr.url }, close: () => proxy.close() };
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? '{}') as BenchWorkerConfig;
  const worker = await startBenchWorker(cfg);
  let closing = false;
  const stop = (): void => {
    if (closing) return;
    closing = true;
    void worker.close().finally(() => process.exit(0));
  };
  process.on('message', (m) => {
    if (m === 'close') stop();
  });
  process.on('disconnect', stop);
  process.send?.(worker.ready);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench worker failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  });
}
