/**
 * Transfers in flight, on the JS side: each batch gets a token, JS keeps the token's Promise and abort
 * listener, native sees only the token and echoes it with the result (udx-native's request table).
 */
import { addAbortListener } from 'node:events';
import { MooncakeError, StatusCodes, codeForStatus } from '../errors';
import type { CompletionCallback, NativeEngine } from './native';
import type { PackedRequests } from './transfer-batch';

export interface TransferOptions {
  /** Cancels the transfer. The Promise settles once the engine no longer touches the memory. */
  signal?: AbortSignal;
  /** Fails the transfer with TIMEOUT after this many milliseconds. */
  timeoutMs?: number;
}

export interface TransferResult {
  /** Bytes moved. */
  bytes: number;
  /** Requests in the batch. */
  requests: number;
}

interface Pending {
  resolve: (r: TransferResult) => void;
  reject: (e: unknown) => void;
  requests: number;
  signal?: AbortSignal;
  dispose?: Disposable;
}

export class TransferTable {
  private readonly pending = new Map<number, Pending>();
  private nextToken = 1;

  /** Batches submitted and not yet completed. */
  get size(): number {
    return this.pending.size;
  }

  /**
   * Submits one batch. Throws synchronously (with the offending index) when a request is invalid: then
   * nothing started. Otherwise the Promise settles when the engine reports the batch.
   */
  submit(native: NativeEngine, packed: PackedRequests, options: TransferOptions = {}): Promise<TransferResult> {
    const { signal, timeoutMs } = options;
    if (timeoutMs !== undefined && (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0)) {
      return Promise.reject(new MooncakeError('INVALID_ARGUMENT', 'timeoutMs must be a positive integer'));
    }
    if (signal?.aborted) return Promise.reject(new MooncakeError('ABORT_ERR', 'the operation was aborted', { cause: signal.reason }));
    const token = this.nextToken++;
    native.submit(token, packed.opcodes, packed.segments, packed.locals, packed.remotes, packed.lengths, timeoutMs ?? 0);
    return new Promise<TransferResult>((resolve, reject) => {
      const p: Pending = { resolve, reject, requests: packed.opcodes.length, signal };
      if (signal) p.dispose = addAbortListener(signal, () => native.cancel(token, 'abort'));
      this.pending.set(token, p);
    });
  }

  /** The engine's completion callback: settles each reported batch. */
  readonly onCompletions: CompletionCallback = (tokens, codes, bytes, details) => {
    for (let i = 0; i < tokens.length; i++) {
      const p = this.pending.get(tokens[i]);
      if (!p) continue;
      this.pending.delete(tokens[i]);
      p.dispose?.[Symbol.dispose]();
      const code = codes[i];
      if (code === StatusCodes.OK) {
        p.resolve({ bytes: bytes[i], requests: p.requests });
        continue;
      }
      const perTask = details[i];
      const failures = perTask ? Array.from(perTask, (c) => codeForStatus(c)) : undefined;
      const failed = failures ? failures.filter((f) => f !== undefined).length : p.requests;
      const err = MooncakeError.fromStatus(code, undefined, { failures, cause: code === StatusCodes.ABORTED ? p.signal?.reason : undefined });
      const message = `${failed} of ${p.requests} request${p.requests === 1 ? '' : 's'} failed: ${err.message} (${err.code})`;
      p.reject(new MooncakeError(err.code, message, { failures, cause: err.cause }));
    }
  };
}
