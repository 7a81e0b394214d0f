/**
 * `mooncake-node doctor`: checks, on an Ascend host, everything the `mooncake` backend needs and says
 * what it found: the installed mooncake-transfer-engine wheel and its version, the library and how it
 * bound, the CANN libraries, the visible NPUs, the per-thread device context, and a loopback transfer
 * over upstream's `ascend` transport (two engines in this process, NPU memory to NPU memory, bytes
 * checked). Exit code 1 when a check fails.
 */
import { createHash, randomBytes } from 'node:crypto';
import { TransferEngine } from '../engine';
import { defineCommand } from '../cli/command';
import { MooncakeError, StatusCodes, type ErrorCode } from '../errors';
import { MetadataServer } from '../metadata';
import { defaultAdvertiseAddress } from '../engine/options';
import { findMooncakeWheel, TESTED_WHEEL_VERSIONS } from '../engine/upstream-wheel';

export interface DoctorCheck {
  name: string;
  ok: boolean | 'skipped';
  detail: string;
}

export interface DoctorOptions {
  /** Python whose environment has the wheel (default MOONCAKE_PYTHON, else python3). */
  python?: string;
  /** libtransfer_engine.so to use instead of the wheel's. */
  library?: string;
  /** NPU for the checks (default npu:0). */
  device?: string;
  /** Address the two loopback engines advertise (default as the engine's advertiseAddress). */
  address?: string;
  /** Bytes moved by the loopback transfer (default 8 MiB). */
  bytes?: number;
}

const ENV_SHOWN = /^(ASCEND_RT_VISIBLE_DEVICES|ASCEND_BASE_PORT|ASCEND_[A-Z_]*TIMEOUT|ASCEND_AUTO_CONNECT|ASCEND_TOOLKIT_HOME|ASCEND_HOME_PATH|HCCL_.*|MC_FORCE_TCP|MOONCAKE_.*)$/;

/** Runs every check; never throws (a failure is a failed check). */
export async function runDoctor(o: DoctorOptions = {}): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const add = (name: string, ok: DoctorCheck['ok'], detail: string) => checks.push({ name, ok, detail });
  const device = o.device ?? 'npu:0';
  const env = Object.entries(process.env).filter(([k]) => ENV_SHOWN.test(k)).map(([k, v]) => `${k}=${v}`);
  add('environment', true, env.length > 0 ? env.join(' ') : '(no ASCEND_*, HCCL_* or MOONCAKE_* variables set)');

  const library = o.library ?? process.env.MOONCAKE_TE_LIBRARY;
  if (!library) {
    const python = o.python ?? process.env.MOONCAKE_PYTHON ?? 'python3';
    const wheel = await findMooncakeWheel(python);
    if ('reason' in wheel) add('wheel', false, wheel.reason);
    else add('wheel', TESTED_WHEEL_VERSIONS.includes(wheel.version) || 'skipped', `${wheel.package} ${wheel.version} (${python}): ${wheel.library}${TESTED_WHEEL_VERSIONS.includes(wheel.version) ? '' : `; untested here (tested: ${TESTED_WHEEL_VERSIONS.join(', ')})`}`);
  } else {
    add('wheel', 'skipped', `using ${library} (${o.library ? '--library' : 'MOONCAKE_TE_LIBRARY'})`);
  }

  const meta = new MetadataServer({ logger: null });
  const engines: TransferEngine[] = [];
  try {
    const url = (await meta.listen(0, '127.0.0.1')).url;
    const address = o.address ?? defaultAdvertiseAddress();
    const create = async (n: number) => {
      const e = await TransferEngine.create({
        backend: 'mooncake', protocol: 'ascend', device, metadataServer: url, localServerName: `${address}:${40000 + n}`,
        ...(library ? { library } : { python: o.python }),
      });
      engines.push(e);
      return e;
    };
    let a: TransferEngine;
    try {
      a = await create(1);
    } catch (e) {
      const err = e as MooncakeError;
      add('library', false, `[${err.code}] ${err.message}`);
      return checks;
    }
    const info = a.upstream!;
    add('library', true, `${info.library} (${info.lazyBinding ? 'lazy binding, TCP only' : 'all symbols bound'}; found through ${info.source})`);
    for (const c of info.cann) add(`CANN ${c.name}`, c.path ? (c.standin ? 'skipped' : true) : false, c.path ? `${c.path}${c.standin ? ` (a mooncake-node test STAND-IN "${c.standin}", not CANN)` : ''}` : 'not found');
    if (info.ascendTransport !== 'ready') {
      add('ascend transport', false, info.ascendTransport === 'absent' ? 'this build has no Ascend transport' : `${info.ascendProblem ?? 'unusable'}${info.forceTcp ? ' (MC_FORCE_TCP is set: TCP only)' : ''}`);
      return checks;
    }
    add('ascend transport', true, 'installed (ADXL engine initialized on this device)');
    const probe = await a.allocateDeviceMemory('npu:999999', 2 << 20).then(() => undefined, (e: MooncakeError) => e.message);
    const visible = /\((\d+) (?:NPUs|devices) visible\)/.exec(probe ?? '')?.[1];
    add('NPUs', visible !== undefined && Number(visible) > 0, visible !== undefined ? `${visible} visible${process.env.ASCEND_RT_VISIBLE_DEVICES ? ` (ASCEND_RT_VISIBLE_DEVICES=${process.env.ASCEND_RT_VISIBLE_DEVICES})` : ''}` : `cannot tell: ${probe}`);
    add('device context', true, `${device} is current on every thread mooncake-node uses (the engine was created on it)`);

    const bytes = o.bytes ?? 8 << 20;
    try {
      const b = await create(2);
      const src = await a.allocateDeviceMemory(device, bytes);
      const dst = await b.allocateDeviceMemory(device, bytes);
      const data = randomBytes(bytes);
      await a.copyToDevice(src, 0, data);
      const seg = await a.openSegment(b.localServerName);
      const t0 = performance.now();
      await a.write(seg, [{ local: src, remote: seg.address(0, 0, bytes), length: bytes }], { timeoutMs: 30_000 });
      const ms = performance.now() - t0;
      const back = Buffer.alloc(bytes);
      await b.copyFromDevice(dst, 0, back);
      const same = createHash('sha256').update(back).digest('hex') === createHash('sha256').update(data).digest('hex');
      add('loopback transfer', same, same ? `${bytes} bytes ${device} -> ${device} over ascend, verified (${(bytes / ms / 1e6).toFixed(2)} GB/s including the first connection)` : 'bytes arrived changed');
    } catch (e) {
      const err = e as MooncakeError;
      add('loopback transfer', false, `[${err.code}] ${err.message}`);
    }
  } catch (e) {
    add('doctor', false, (e as Error).message);
  } finally {
    for (const e of engines) await e.close().catch(() => undefined);
    await meta.close().catch(() => undefined);
  }
  return checks;
}

/** The error code a failed check's detail names (`[CODE] ...` or `CODE: ...`), else INVALID_CONFIG: the host is not set up. */
function failureCode(detail: string): ErrorCode {
  const known = new Set<string>([...Object.keys(StatusCodes), 'NATIVE_LOAD_FAILED', 'MISSING_DEPENDENCY']);
  for (const m of detail.matchAll(/\b[A-Z][A-Z_]{3,}\b/g)) if (known.has(m[0]) && m[0] !== 'OK') return m[0] as ErrorCode;
  return 'INVALID_CONFIG';
}

/** `mooncake-node doctor`: one line per check (or JSON); a failed check makes it end with one coded line and exit 1. */
export const doctorCommand = defineCommand({
  name: 'doctor',
  summary: 'checks the mooncake backend on an Ascend host (wheel, CANN, NPUs, ascend loopback)',
  description: [
    'Checks the mooncake backend on this host: the mooncake-transfer-engine wheel and its version, the',
    "library, CANN's libraries, visible NPUs, the device context, and a loopback transfer over ascend.",
  ].join('\n'),
  flags: {
    python: { type: 'string', arg: 'PATH', help: 'Python whose environment has the wheel (default $MOONCAKE_PYTHON, else python3)' },
    library: { type: 'string', arg: 'PATH', help: "libtransfer_engine.so to use instead of the wheel's" },
    device: { type: 'string', arg: 'npu:N', help: 'NPU for the checks (default npu:0)' },
    address: { type: 'string', arg: 'IP', help: "address the two loopback engines advertise (default as the engine's)" },
    json: { type: 'boolean', help: 'print the checks as JSON' },
  },
  async run(v, ctx) {
    const checks = await runDoctor({ python: v.python, library: v.library, device: v.device, address: v.address });
    if (v.json === true) ctx.stdout.write(JSON.stringify(checks, null, 2) + '\n');
    else for (const c of checks) ctx.stdout.write(`${c.ok === true ? ' ok ' : c.ok === false ? 'FAIL' : ' -- '}  ${c.name.padEnd(22)} ${c.detail}\n`);
    const failed = checks.filter((c) => c.ok === false);
    if (failed.length > 0) {
      throw new MooncakeError(failureCode(failed[0].detail), `${failed.length} check${failed.length === 1 ? '' : 's'} failed: ${failed.map((c) => c.name).join(', ')}`);
    }
  },
});
