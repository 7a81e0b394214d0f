/**
 * Finds the real upstream Mooncake peer that scripts/setup-upstream-peer.sh (`mooncake-node setup-upstream`)
 * installs: the pinned PyPI wheel mooncake-transfer-engine-non-cuda in a venv, and the environment upstream
 * processes must run with. Used by `bench --compare` and the interop tests.
 *
 * Where the venv is: `$MOONCAKE_UPSTREAM_VENV`, else `.venv-upstream/` in a checkout of this repository, else
 * (an installed package) `$XDG_CACHE_HOME/mooncake-node/venv-upstream` (~/.cache/...).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { packageRoot } from '../engine/native';

export const UPSTREAM_SETUP_COMMAND = 'npx mooncake-node setup-upstream';

/** The venv setup-upstream creates and findUpstream looks in. */
export function defaultUpstreamVenv(root: string = packageRoot, env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.MOONCAKE_UPSTREAM_VENV;
  if (fromEnv !== undefined && fromEnv !== '') return path.resolve(fromEnv);
  const inRepo = path.join(root, '.venv-upstream');
  if (fs.existsSync(inRepo) || fs.existsSync(path.join(root, '.git'))) return inRepo;
  const cache = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : path.join(os.homedir(), '.cache');
  return path.join(cache, 'mooncake-node', 'venv-upstream');
}
export const UPSTREAM_PINNED_VERSION = '0.3.13.post1';
const MARKER = '.mooncake-upstream.json';

export interface UpstreamInstall {
  venv: string;
  python: string;
  /** The native transfer_engine_bench ELF inside the wheel (not bin/'s Python wrapper). */
  bench: string;
  /** The mooncake_http_metadata_server console script (run it with `python`). */
  metadataServer: string;
  version: string;
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function findSitePackages(venv: string): string | undefined {
  const lib = path.join(venv, 'lib');
  if (!fs.existsSync(lib)) return undefined;
  for (const d of fs.readdirSync(lib)) {
    const sp = path.join(lib, d, 'site-packages');
    if (fs.existsSync(path.join(sp, 'mooncake'))) return sp;
  }
  return undefined;
}

/** The upstream install, or why it is unavailable. */
export function findUpstream(root: string = packageRoot): UpstreamInstall | { skipReason: string } {
  const fromEnv = process.env.MOONCAKE_UPSTREAM_VENV;
  const venv = defaultUpstreamVenv(root);
  const how = `run ${UPSTREAM_SETUP_COMMAND} (in a checkout: bash scripts/setup-upstream-peer.sh)${fromEnv ? ` with MOONCAKE_UPSTREAM_VENV=${fromEnv}` : ''}`;
  if (!fs.existsSync(venv)) return { skipReason: `upstream Mooncake venv not found at ${venv}; ${how}` };
  const python = path.join(venv, 'bin', 'python');
  if (!isExecutable(python)) return { skipReason: `${python} is missing or not executable; ${how}` };
  const metadataServer = path.join(venv, 'bin', 'mooncake_http_metadata_server');
  if (!fs.existsSync(metadataServer)) return { skipReason: `${metadataServer} is missing; ${how}` };
  const sitePackages = findSitePackages(venv);
  if (!sitePackages) return { skipReason: `no site-packages with the mooncake package under ${venv}/lib; ${how}` };
  const bench = path.join(sitePackages, 'mooncake', 'transfer_engine_bench');
  if (!fs.existsSync(bench)) return { skipReason: `${bench} is missing; ${how}` };
  let version: string | undefined;
  try {
    const marker = JSON.parse(fs.readFileSync(path.join(venv, MARKER), 'utf8')) as { version?: unknown };
    if (typeof marker.version === 'string') version = marker.version;
  } catch {
    // No marker (a venv made by hand): read the version from the dist-info directory.
  }
  if (version === undefined) {
    const distInfo = fs.readdirSync(sitePackages).find((n) => /^mooncake_transfer_engine[a-z0-9_]*-.+\.dist-info$/.test(n));
    version = distInfo?.replace(/^mooncake_transfer_engine[a-z0-9_]*-/, '').replace(/\.dist-info$/, '');
  }
  if (version === undefined) return { skipReason: `cannot tell which Mooncake version is installed in ${venv}; ${how}` };
  return { venv, python, bench, metadataServer, version };
}

/** Environment for upstream processes: loopback advertisement, classic engine, no proxies. */
export function upstreamEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/_proxy$/i.test(k)) continue;
    if (k === 'MC_USE_TENT' || k === 'MC_USE_TEV1') continue;
    env[k] = v;
  }
  env.MC_TCP_BIND_ADDRESS = '127.0.0.1';
  env.PYTHONUNBUFFERED = '1';
  return { ...env, ...extra };
}
