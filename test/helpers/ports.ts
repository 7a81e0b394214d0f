/** Port helpers for suites that need several consecutive ports (kv_port + rank addressing). */
import * as net from 'node:net';

/** A base port with `n` consecutive free ports after it (probed, then released). */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    const servers: net.Server[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const s = net.createServer();
        await new Promise<void>((resolve, reject) => s.once('error', reject).listen(base + i, '127.0.0.1', () => resolve()));
        servers.push(s);
      }
      return base;
    } catch {
      /* taken: try another base */
    } finally {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    }
  }
  throw new Error(`no ${n} consecutive free ports found`);
}
