/** Port helpers for what addresses ranks at consecutive ports (kv_port + rank, vllm-ascend's rule). */
import * as net from 'node:net';
import { MooncakeError } from '../errors';

/** A base port with `n` consecutive free ports after it on 127.0.0.1 (probed, then released). */
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
  throw new MooncakeError('SOCKET', `no ${n} consecutive free ports found`);
}
