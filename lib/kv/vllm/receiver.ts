/**
 * The decode side of vLLM's MooncakeConnector side channel: find the prefill instance's workers through its
 * bootstrap server (`remote_bootstrap_addr`, cached per server, queried again when the engine id is unknown),
 * then ask each prefill rank it pairs with to write the request's blocks (MooncakeXferMetadata over a DEALER)
 * and read its answers until one settles the request.
 */
import { MooncakeError } from '../../errors';
import { failureStage } from '../ledger';
import { failedBatch, type BatchResult } from '../rank';
import { dealerExchange } from '../zmq/stream';
import { queryBootstrap, type BootstrapTable } from './bootstrap';
import { encodeXferMetadata, parseXferResponse, XFER_STATUS, type XferRegion } from './wire';

const MAX_SERVERS = 1024;

/** The prefill instance `engineId` as its bootstrap server lists it. */
export interface PrefillWorkers {
  dpRank: number;
  tpSize: number;
  /** tcp://host:port of each tp rank's side channel (pp rank 0). */
  address: Map<number, string>;
}

export class BootstrapCache {
  private readonly tables = new Map<string, Promise<BootstrapTable>>();

  constructor(private readonly timeoutMs: number) {}

  private query(address: string, signal?: AbortSignal): Promise<BootstrapTable> {
    const q = queryBootstrap(address, { timeoutMs: this.timeoutMs, signal });
    this.tables.set(address, q);
    if (this.tables.size > MAX_SERVERS) this.tables.delete(this.tables.keys().next().value as string);
    q.catch(() => this.tables.delete(address));
    return q;
  }

  /** The workers of `engineId` behind `address` (queried again once when the cached table lacks it). */
  async workers(address: string, engineId: string, signal?: AbortSignal): Promise<PrefillWorkers> {
    const find = (t: BootstrapTable): PrefillWorkers | undefined => {
      for (const [dpRank, e] of t) {
        if (e.engineId !== engineId) continue;
        const addrs = new Map<number, string>();
        for (const [tp, pps] of e.workers) {
          const a = pps.get(0);
          if (a !== undefined) addrs.set(tp, a);
        }
        return { dpRank, tpSize: e.workers.size, address: addrs };
      }
      return undefined;
    };
    const cached = this.tables.get(address);
    const hit = cached ? find(await cached) : undefined;
    if (hit) return hit;
    const fresh = find(await this.query(address, signal));
    if (!fresh) {
      throw new MooncakeError('SEGMENT_NOT_FOUND', `remote engine_id ${engineId} not found from bootstrap server ${address}`, { details: { address, engineId } });
    }
    return fresh;
  }

  invalidate(address: string): void {
    this.tables.delete(address);
  }
}

export interface PullRequest {
  bootstrap: BootstrapCache;
  bootstrapAddress: string;
  engineId: string;
  transferId: string;
  /** The id this rank names the request by in the message (ok_reqs / err_reqs echo it). */
  requestId: string;
  prefillRank: number;
  /** vLLM's prefill tp size this rank was configured with (the bootstrap server's must agree). */
  prefillTp: number;
  blockIds: number[];
  /** Bytes the rank expects from this prefill rank when it succeeds (the slices it holds). */
  expectedBytes: number;
  /** This rank's engine address and regions. */
  host: string;
  port: number;
  tpRank: number;
  tpSize: number;
  regions: XferRegion[];
  deadline: number;
  connectTimeoutMs: number;
  signal?: AbortSignal;
}

function parseAddress(a: string): { host: string; port: number } | undefined {
  const m = /^tcp:\/\/(?:\[([^\]]+)\]|([^:/]+)):(\d{1,5})$/.exec(a);
  return m ? { host: m[1] ?? m[2], port: Number(m[3]) } : undefined;
}

/** Asks one prefill rank to write the request's blocks; every failure becomes a failed batch with its stage. */
export async function pullFromPrefill(r: PullRequest): Promise<BatchResult> {
  const peer = { engineId: r.engineId, dpRank: 0, tpRank: r.prefillRank, segment: '' };
  const fail = (error: MooncakeError, stage: ReturnType<typeof failureStage>): BatchResult => ({ ...failedBatch(peer, r.blockIds.length, error), stage });
  let address: { host: string; port: number } | undefined;
  try {
    const w = await r.bootstrap.workers(r.bootstrapAddress, r.engineId, r.signal);
    peer.dpRank = w.dpRank;
    if (w.tpSize !== r.prefillTp) {
      return fail(new MooncakeError('INVALID_CONFIG', `prefill ${r.engineId} has ${w.tpSize} tp ranks at ${r.bootstrapAddress}; this decode was configured for ${r.prefillTp}`, { details: { field: 'prefill.tpSize' } }), 'REGISTRATION');
    }
    const a = w.address.get(r.prefillRank);
    address = a === undefined ? undefined : parseAddress(a);
    if (!address) throw new MooncakeError('SEGMENT_NOT_FOUND', `prefill ${r.engineId} rank ${r.prefillRank} has no usable side-channel address at ${r.bootstrapAddress} (${String(a)})`);
    peer.segment = a as string;
  } catch (err) {
    const e = err instanceof MooncakeError ? err : new MooncakeError('PROTOCOL_ERROR', String(err), { cause: err });
    return fail(e, failureStage(e, 'lookup', 'remote'));
  }
  const payload = encodeXferMetadata({
    host: r.host,
    port: r.port,
    tpSize: r.tpSize,
    tpRank: r.tpRank,
    ppSize: 1,
    layoutId: 0n,
    reqBlocks: new Map([[r.requestId, { transferId: r.transferId, groups: [r.blockIds] }]]),
    regions: r.regions,
  });
  let result: { ok: boolean; why?: string; status?: number } | undefined;
  try {
    await dealerExchange(address.host, address.port, payload, (bytes) => {
      const res = parseXferResponse(bytes);
      if (res.status === XFER_STATUS.ERROR || res.status === XFER_STATUS.LAYOUT_MISS) {
        result = { ok: false, why: res.errMsg ?? 'transfer error', status: res.status };
        return true;
      }
      if (res.errReqs.includes(r.requestId)) result = { ok: false, why: res.errMsg ?? 'unknown error' };
      else if (res.okReqs.includes(r.requestId)) result = { ok: true };
      if (result || res.status === XFER_STATUS.FINISH) return true;
      return false;
    }, { deadline: r.deadline, signal: r.signal, connectTimeoutMs: r.connectTimeoutMs });
  } catch (err) {
    const e = err instanceof MooncakeError ? err : new MooncakeError('PROTOCOL_ERROR', `the answer of prefill ${r.engineId} rank ${r.prefillRank} is not a MooncakeXferResponse: ${(err as Error).message}`, { cause: err });
    // An address that does not answer is stale (the prefill restarted elsewhere): ask its server again next time.
    if (e.code === 'CONNECT_FAILED') r.bootstrap.invalidate(r.bootstrapAddress);
    return fail(e, e.code === 'CONNECT_FAILED' ? 'BOOTSTRAP' : failureStage(e, 'wait', 'remote'));
  }
  if (!result) result = { ok: false, why: 'peer finished without reporting a transfer result' };
  if (!result.ok) {
    const e = new MooncakeError('REMOTE_REJECTED', `prefill ${r.engineId} rank ${r.prefillRank} did not write ${r.transferId}: ${result.why ?? ''}`, { details: { transferId: r.transferId, status: result.status } });
    return fail(e, 'SEND');
  }
  return { peer: { ...peer, bytes: r.expectedBytes, ranges: 0, ok: true }, failed: [] };
}
