/**
 * Drives test/interop/peers/handshake_peer.py: a real upstream Mooncake engine
 * (mooncake.engine.TransferEngine from the PyPI wheel) in a child process (see line-peer.ts).
 */
import { type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as path from 'node:path';
import { SETUP_COMMAND, upstreamPeer } from '../../helpers/upstream';
import { LinePeer, type PeerReply } from './line-peer';

export const PEER_SCRIPT = path.join(__dirname, 'handshake_peer.py');
export { SETUP_COMMAND, type PeerReply };

/** The upstream Python, from the shared helper (test/helpers/upstream.ts), or why it is missing. */
export function findUpstreamPython(): { python: string; version: string } | { skipReason: string } {
  const peer = upstreamPeer();
  return 'skipReason' in peer ? peer : { python: peer.python, version: peer.version };
}

/** `stop()` closes stdin (the script then exits), then SIGTERM, then SIGKILL. */
export class PythonPeer extends LinePeer {
  private constructor(child: ChildProcessWithoutNullStreams) {
    super(child, PEER_SCRIPT);
  }

  /** Starts the peer script and waits for its first answer. */
  static start(python: string, args: string[] = [], env: Record<string, string> = {}): Promise<{ peer: PythonPeer; hello: PeerReply }> {
    return LinePeer.launch((child) => new PythonPeer(child), python, PEER_SCRIPT, { args, env, timeoutMs: 60_000 });
  }
}
