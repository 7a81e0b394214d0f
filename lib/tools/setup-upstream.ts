/**
 * `mooncake-node setup-upstream`: installs upstream Mooncake's pinned wheel into a venv (the script that
 * ships in scripts/setup-upstream-peer.sh), so `bench --compare` can run upstream's own bench from an
 * installed package too. Needs Python >= 3.10 with venv, and PyPI.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defineCommand } from '../cli/command';
import { MooncakeError } from '../errors';
import { packageRoot } from '../engine/native';
import { defaultUpstreamVenv } from './upstream-peer';

export const setupUpstreamCommand = defineCommand({
  name: 'setup-upstream',
  summary: "install upstream Mooncake's pinned wheel for bench --compare and the interop tests",
  description: [
    "Creates a Python venv with upstream Mooncake's pinned wheel (mooncake-transfer-engine-non-cuda), which",
    "provides its transfer_engine_bench and metadata server. Idempotent. Needs Python >= 3.10 and PyPI.",
    'The venv goes to $MOONCAKE_UPSTREAM_VENV, else .venv-upstream/ in a checkout, else ~/.cache/mooncake-node/venv-upstream.',
  ].join('\n'),
  flags: {
    venv: { type: 'string', arg: 'DIR', help: 'where the venv goes (sets MOONCAKE_UPSTREAM_VENV for this run)' },
    force: { type: 'boolean', help: 'recreate the venv from scratch' },
    verify: { type: 'boolean', help: 'check the installed pieces run, even when already installed' },
  },
  async run(v, ctx) {
    const script = path.join(packageRoot, 'scripts', 'setup-upstream-peer.sh');
    if (!fs.existsSync(script)) throw new MooncakeError('LIBRARY_NOT_FOUND', `${script} is missing from this install of mooncake-node`);
    const venv = v.venv !== undefined ? path.resolve(v.venv) : defaultUpstreamVenv(packageRoot, { ...process.env, ...ctx.env });
    const args = [script, ...(v.force === true ? ['--force'] : []), ...(v.verify === true ? ['--verify'] : [])];
    const child = spawn('bash', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...ctx.env, MOONCAKE_UPSTREAM_VENV: venv } });
    child.stdout.pipe(ctx.stdout, { end: false });
    let tail = '';
    child.stderr.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-2000);
    });
    const onAbort = (): void => {
      child.kill('SIGTERM');
    };
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', (e) => reject(new MooncakeError('LIBRARY_NOT_FOUND', `cannot run bash: ${e.message}`, { cause: e })));
      child.once('close', (c) => resolve(c));
    });
    ctx.signal.removeEventListener('abort', onAbort);
    ctx.signal.throwIfAborted();
    if (code !== 0) {
      const lines = tail.replace(/\x1b\[[0-9;]*m/g, '').split('\n');
      const why = lines.map((l) => l.replace(/^setup-upstream-peer: (ERROR: )?/, '').trim()).filter((l) => l !== '').pop() ?? `exit code ${code}`;
      throw new MooncakeError('LIBRARY_NOT_FOUND', `setting up upstream Mooncake in ${venv} failed: ${why}`, { details: { venv, exit: code } });
    }
  },
});
