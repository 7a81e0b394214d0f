/**
 * Frames of upstream Mooncake's handshake socket (`writeString` / `readString` in
 * mooncake-transfer-engine/include/common.h).
 *
 *   bytes 0..7  length, u64 in host byte order (little-endian on x86/ARM): type byte + JSON bytes
 *   byte  8     type: 0 Connection, 1 Metadata, 2 Notify, 3 Probe
 *   bytes 9..   JSON text (FastWriter output, ends with '\n')
 *
 * OldProtocol frames have no type byte (`length` = JSON size). A reader recognises them because the
 * first payload byte is greater than 3 (it is `{`); they are handled as Connection, and the reply
 * to one is untyped too.
 *
 * Everything here is pure (no sockets, no timers) so it can be fuzzed on its own.
 */

import { endianness } from 'node:os';
import { MooncakeError } from '../errors';
import { messageText, parseJson, type JsonValue } from './json';

export const HandshakeType = {
  Connection: 0,
  Metadata: 1,
  Notify: 2,
  Probe: 3,
} as const;
export type HandshakeType = (typeof HandshakeType)[keyof typeof HandshakeType];

export const HANDSHAKE_TYPE_NAMES: Record<HandshakeType, 'connection' | 'metadata' | 'notify' | 'probe'> = {
  0: 'connection',
  1: 'metadata',
  2: 'notify',
  3: 'probe',
};

export function isHandshakeType(n: number): n is HandshakeType {
  return n === 0 || n === 1 || n === 2 || n === 3;
}

/** Size of the length prefix. */
export const LENGTH_BYTES = 8;
/** Upstream's default receive limit (`kDefaultHandshakeMaxLength`), which is also the smallest allowed setting. */
export const DEFAULT_MAX_LENGTH = 1 << 20;
/** Largest value `MC_HANDSHAKE_MAX_LENGTH` accepts. */
export const MAX_MAX_LENGTH = 128 * (1 << 20);

const LITTLE_ENDIAN = endianness() === 'LE';

/**
 * The receive limit from `MC_HANDSHAKE_MAX_LENGTH`, exactly as upstream reads it: a plain decimal
 * number of bytes in [1 MiB, 128 MiB]; anything else (or unset) gives the 1 MiB default.
 */
export function handshakeMaxLengthFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.MC_HANDSHAKE_MAX_LENGTH;
  if (raw === undefined || !/^[0-9]+$/.test(raw)) return DEFAULT_MAX_LENGTH;
  const n = Number(raw);
  return n >= DEFAULT_MAX_LENGTH && n <= MAX_MAX_LENGTH ? n : DEFAULT_MAX_LENGTH;
}

function checkMaxLength(maxLength: number): number {
  if (!Number.isSafeInteger(maxLength) || maxLength < 1) {
    throw new MooncakeError('INVALID_ARGUMENT', `maxLength must be a positive integer, got ${maxLength}`);
  }
  return maxLength;
}

export interface Frame {
  /** Message type; an OldProtocol frame reports Connection. */
  type: HandshakeType;
  /** True for an untyped (pre-type-byte) frame; its reply must be untyped as well. */
  oldProtocol: boolean;
  /** The JSON bytes (type byte stripped), trailing newline included as received. */
  payload: Buffer;
}

function writeLength(buf: Buffer, n: number): void {
  if (LITTLE_ENDIAN) buf.writeBigUInt64LE(BigInt(n), 0);
  else buf.writeBigUInt64BE(BigInt(n), 0);
}

/**
 * One frame around JSON text that is already serialized (`payload` is sent verbatim, so it should
 * end in `\n` like upstream's). `oldProtocol` writes an untyped frame; only Connection may be untyped.
 */
export function encodeFrame(type: HandshakeType, payload: string | Uint8Array, options: { oldProtocol?: boolean } = {}): Buffer {
  if (!isHandshakeType(type)) throw new MooncakeError('INVALID_ARGUMENT', `unknown handshake type ${String(type)}`);
  const old = options.oldProtocol === true;
  if (old && type !== HandshakeType.Connection) {
    throw new MooncakeError('INVALID_ARGUMENT', 'only Connection messages can use the old (untyped) framing');
  }
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const head = old ? LENGTH_BYTES : LENGTH_BYTES + 1;
  const out = Buffer.allocUnsafe(head + body.length);
  writeLength(out, body.length + (old ? 0 : 1));
  if (!old) out[LENGTH_BYTES] = type;
  body.copy(out, head);
  return out;
}

/** A frame carrying `body` written as FastWriter would (or a RawJson's text). */
export function encodeMessage(type: HandshakeType, body: unknown, options: { oldProtocol?: boolean } = {}): Buffer {
  return encodeFrame(type, messageText(body), options);
}

/** Parses a frame's JSON (MALFORMED_JSON on failure; an empty payload is malformed too). */
export function parseFrameJson(frame: Frame): JsonValue {
  return parseJson(frame.payload);
}

export interface FrameDecoderOptions {
  /** Largest accepted `length` field (default 1 MiB, as upstream). */
  maxLength?: number;
}

/**
 * Incremental decoder: `push()` chunks as they arrive and get back every frame they complete.
 * After it throws, the decoder is broken and keeps throwing the same error (a stream cannot be
 * resynchronised). Errors are MooncakeError('PROTOCOL_ERROR') with `details.reason`:
 * 'zero-length', 'too-long' (details.length, details.maxLength) and, from `end()`, 'truncated'.
 *
 * A chunk that completes frames and then goes wrong (a valid request followed by stray bytes in the
 * same TCP segment) returns those frames; the error is thrown by the next `push()` or `end()`, so the
 * frames that arrived intact are never lost to the garbage behind them. `failed` tells whether such
 * an error is pending.
 */
export class FrameDecoder {
  readonly maxLength: number;
  private chunks: Buffer[] = [];
  private size = 0;
  /** Payload length of the frame being read, once its prefix is complete. */
  private need = -1;
  private error: MooncakeError | undefined;

  constructor(options: FrameDecoderOptions = {}) {
    this.maxLength = checkMaxLength(options.maxLength ?? DEFAULT_MAX_LENGTH);
  }

  /** Bytes held that do not yet form a frame. */
  get buffered(): number {
    return this.size;
  }

  /** An error is pending (thrown by the next `push()` / `end()`). */
  get failed(): boolean {
    return this.error !== undefined;
  }

  /** The declared payload length of the frame in progress, if its prefix has arrived. */
  get pendingLength(): number | undefined {
    return this.need < 0 ? undefined : this.need;
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.error) throw this.error;
    if (chunk.byteLength > 0) {
      this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.size += chunk.byteLength;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.need < 0) {
        if (this.size < LENGTH_BYTES) break;
        const prefix = this.take(LENGTH_BYTES);
        const length = LITTLE_ENDIAN ? prefix.readBigUInt64LE(0) : prefix.readBigUInt64BE(0);
        if (length === 0n) {
          this.error = new MooncakeError('PROTOCOL_ERROR', 'handshake frame with zero length', { details: { reason: 'zero-length' } });
        } else if (length > BigInt(this.maxLength)) {
          this.error = new MooncakeError('PROTOCOL_ERROR', `handshake frame of ${length} bytes exceeds the limit of ${this.maxLength}`, {
            details: { reason: 'too-long', length: length <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(length) : length.toString(), maxLength: this.maxLength },
          });
        }
        if (this.error) {
          // Frames completed before the bad prefix are returned; the error comes with the next call.
          if (frames.length > 0) return frames;
          throw this.error;
        }
        this.need = Number(length);
      }
      if (this.size < this.need) break;
      const payload = this.take(this.need);
      this.need = -1;
      const first = payload[0]!;
      frames.push(
        isHandshakeType(first)
          ? { type: first, oldProtocol: false, payload: payload.subarray(1) }
          : { type: HandshakeType.Connection, oldProtocol: true, payload },
      );
    }
    return frames;
  }

  /** Call at end of stream: throws 'truncated' if a partial frame is buffered. */
  end(): void {
    if (this.error) throw this.error;
    if (this.size > 0 || this.need >= 0) {
      throw (this.error = new MooncakeError('PROTOCOL_ERROR', 'handshake stream ended inside a frame', {
        details: { reason: 'truncated', buffered: this.size, ...(this.need >= 0 ? { length: this.need } : {}) },
      }));
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const head = this.chunks[0]!;
    if (head.length >= n) {
      out = head.subarray(0, n);
      if (head.length === n) this.chunks.shift();
      else this.chunks[0] = head.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.size -= n;
    return out;
  }
}

/** Decodes a buffer that must hold exactly whole frames (for tests and fuzzing). */
export function decodeFrames(data: Uint8Array, options: FrameDecoderOptions = {}): Frame[] {
  const d = new FrameDecoder(options);
  const frames = d.push(data);
  d.end();
  return frames;
}
