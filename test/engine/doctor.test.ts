// `mooncake-node doctor` on this CPU-only machine: with the working CANN stand-ins every check passes
// (the stand-ins reported as such), and with the empty ones it fails, naming the missing ACL function.
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runDoctor } from '../../lib/tools/doctor';
import { cannStandinDir } from '../helpers/ascend-standin';
import { repoRoot, upstreamNpu } from '../helpers/upstream';

const npu = upstreamNpu();
const skipReason = 'skipReason' in npu ? npu.skipReason : undefined;
if (skipReason) console.warn(`\n[doctor] SKIPPED: ${skipReason}\n`);

function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    const full: NodeJS.ProcessEnv = { ...process.env, ...env };
    delete full.MC_FORCE_TCP; // upstream treats any value, even '', as set
    execFile(process.execPath, [path.join(repoRoot, 'dist/cli.js'), 'doctor', ...args], { env: full, timeout: 60_000 }, (err, stdout) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout: String(stdout) }));
  });
}

describe.skipIf(skipReason !== undefined)('mooncake-node doctor', () => {
  it('passes every check on the CANN stand-ins: wheel, library, NPUs, device context, loopback over ascend', async () => {
    if ('skipReason' in npu) return;
    process.env.MOONCAKE_ASCENDCL_LIBRARY = path.join(cannStandinDir(), 'libascendcl.so');
    process.env.MC_TCP_BIND_ADDRESS = '127.0.0.1';
    delete process.env.MC_FORCE_TCP;
    const checks = await runDoctor({ python: npu.python, address: '127.0.0.1' });
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(checks.filter((c) => c.ok === false)).toEqual([]);
    expect(by.wheel!.detail).toContain(`mooncake-transfer-engine-npu ${npu.version}`);
    expect(by['CANN libllm_datadist.so']).toMatchObject({ ok: 'skipped', detail: expect.stringMatching(/STAND-IN "adxl", not CANN/) });
    expect(by.NPUs).toMatchObject({ ok: true, detail: expect.stringMatching(/^2 visible/) });
    expect(by['loopback transfer']!.detail).toMatch(/over ascend, verified/);
  });

  it('fails, exit code 1, on the empty stand-ins and names what is missing (CLI, --json)', async () => {
    if ('skipReason' in npu) return;
    const { code, stdout } = await cli(['--python', npu.python, '--json'], { MOONCAKE_ASCENDCL_LIBRARY: path.join(npu.cannStandin, 'libascendcl.so') });
    expect(code).toBe(1);
    const checks = JSON.parse(stdout) as { name: string; ok: boolean; detail: string }[];
    const lib = checks.find((c) => c.name === 'library')!;
    expect(lib.ok).toBe(false);
    expect(lib.detail).toMatch(/LIBRARY_NOT_FOUND.*undefined symbol: aclrt\w+.*MC_FORCE_TCP=1/s);
  });
});
