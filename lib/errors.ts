/**
 * One error class for the whole package. `code` is a stable string; `status` is the engine's numeric
 * status (upstream Mooncake's Status::Code numbers below 1000, mooncake-node's own from 1000).
 */

/** Engine status numbers, as in native/engine/status.h. */
export const StatusCodes = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  TOO_MANY_REQUESTS: 2,
  ADDRESS_NOT_REGISTERED: 3,
  BATCH_BUSY: 4,
  DEVICE_NOT_FOUND: 6,
  ADDRESS_OVERLAPPED: 7,
  NOT_SUPPORTED_TRANSPORT: 8,
  DNS: 101,
  SOCKET: 102,
  MALFORMED_JSON: 103,
  REJECT_HANDSHAKE: 104,
  METADATA: 200,
  ENDPOINT: 201,
  CONTEXT: 202,
  NUMA: 300,
  CLOCK: 301,
  MEMORY: 302,
  NOT_IMPLEMENTED: 999,
  CLOSED: 1000,
  ABORTED: 1001,
  TIMEOUT: 1002,
  REMOTE_REJECTED: 1003,
  REGION_BUSY: 1004,
  SEGMENT_NOT_FOUND: 1005,
  CONNECTION_LOST: 1006,
  CONNECT_FAILED: 1007,
  PROTOCOL_ERROR: 1008,
  INVALID_REMOTE_ADDRESS: 1009,
  LIBRARY_NOT_FOUND: 1010,
  BATCH_NOT_FOUND: 1011,
} as const;

export type EngineCode = Exclude<keyof typeof StatusCodes, 'OK' | 'ABORTED'>;

/**
 * Every code a MooncakeError can carry. Engine codes come from the status enum; `ABORT_ERR` follows
 * Node's convention for AbortSignal cancellations (the error's name is then 'AbortError').
 */
export type ErrorCode = EngineCode | 'ABORT_ERR' | 'INVALID_CONFIG' | 'NATIVE_LOAD_FAILED' | 'MISSING_DEPENDENCY' | 'INTERNAL' | 'STALE_KV';

const byNumber = new Map<number, keyof typeof StatusCodes>(
  Object.entries(StatusCodes).map(([k, v]) => [v, k as keyof typeof StatusCodes]),
);

export interface MooncakeErrorOptions {
  cause?: unknown;
  /** Index of the offending request in a batch, when one request made the whole call fail. */
  index?: number;
  /** Per-request codes of a failed batch (undefined entries succeeded). */
  failures?: (ErrorCode | undefined)[];
  /** Extra context such as the segment or key involved. */
  details?: Record<string, unknown>;
}

export class MooncakeError extends Error {
  readonly code: ErrorCode;
  /** Numeric engine status (negative when unknown). */
  readonly status: number;
  readonly index?: number;
  readonly failures?: (ErrorCode | undefined)[];
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: MooncakeErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = code === 'ABORT_ERR' ? 'AbortError' : 'MooncakeError';
    this.code = code;
    this.status = code in StatusCodes ? StatusCodes[code as keyof typeof StatusCodes] : code === 'ABORT_ERR' ? StatusCodes.ABORTED : -1;
    if (options.index !== undefined) this.index = options.index;
    if (options.failures !== undefined) this.failures = options.failures;
    if (options.details !== undefined) this.details = options.details;
  }

  /** Builds the error for a numeric engine status. ABORTED maps to an AbortError with ABORT_ERR. */
  static fromStatus(status: number, message?: string, options: MooncakeErrorOptions = {}): MooncakeError {
    const name = byNumber.get(status);
    const code: ErrorCode = name === undefined || name === 'OK' ? 'PROTOCOL_ERROR' : name === 'ABORTED' ? 'ABORT_ERR' : name;
    return new MooncakeError(code, message ?? defaultMessage(code), options);
  }
}

export function codeForStatus(status: number): ErrorCode | undefined {
  if (status === 0) return undefined;
  const name = byNumber.get(status);
  if (name === undefined) return 'PROTOCOL_ERROR';
  return name === 'ABORTED' ? 'ABORT_ERR' : (name as ErrorCode);
}

export function isMooncakeError(e: unknown, code?: ErrorCode): e is MooncakeError {
  return e instanceof MooncakeError && (code === undefined || e.code === code);
}

function defaultMessage(code: ErrorCode): string {
  switch (code) {
    case 'CLOSED': return 'the engine is closed';
    case 'ABORT_ERR': return 'the operation was aborted';
    case 'TIMEOUT': return 'the operation timed out';
    case 'REMOTE_REJECTED': return 'the peer rejected the address range';
    case 'CONNECTION_LOST': return 'the connection to the peer was lost';
    case 'CONNECT_FAILED': return 'could not connect to the peer';
    case 'PROTOCOL_ERROR': return 'the peer broke the wire protocol';
    default: return code.toLowerCase().replace(/_/g, ' ');
  }
}

/**
 * A value for an error message, as JSON where possible. Never throws: values handed in by code may
 * hold bigints or cycles, and a bad value must still produce its INVALID_CONFIG, not a TypeError.
 */
export function describeValue(value: unknown): string {
  try {
    return JSON.stringify(value, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}` : x)) ?? String(value);
  } catch {
    return String(value);
  }
}
