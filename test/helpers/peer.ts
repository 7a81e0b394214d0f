/** Spawns test/fixtures/peer.cjs (a TransferEngine in its own process) and talks to it. */
import { type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { FixtureProcess, type FixtureReply } from './fixture-process';

export interface PeerConfig {
  metadataServer: string;
  localServerName?: string;
  memory: number;
  managed?: boolean;
  device?: string;
  pattern?: number;
  options?: Record<string, unknown>;
}

export interface PeerInfo {
  name: string;
  address: bigint;
  length: number;
  rpcPort: number;
  dataPort: number;
}

export class Peer extends FixtureProcess {
  private constructor(child: ChildProcess, readonly info: PeerInfo) {
    super(child, 'peer');
  }

  /** `env` is added to this process's environment for the peer. */
  static async spawn(cfg: PeerConfig, timeoutMs = 20_000, env: NodeJS.ProcessEnv = {}): Promise<Peer> {
    const { child, lines, hello } = await FixtureProcess.startFixture(path.join(__dirname, '../fixtures/peer.cjs'), cfg, 'peer', timeoutMs, env);
    const peer = new Peer(child, {
      name: String(hello.name),
      address: BigInt(hello.address as string),
      length: Number(hello.length),
      rpcPort: Number(hello.rpcPort),
      dataPort: Number(hello.dataPort),
    });
    lines.on('line', (l) => peer.settle(JSON.parse(l) as FixtureReply));
    return peer;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** The same deterministic pattern the peer fixtures use (one implementation: test/fixtures/pattern.cjs). */
export { pattern } from '../fixtures/pattern.cjs';
