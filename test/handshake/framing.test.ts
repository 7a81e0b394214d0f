import { describe, expect, it } from 'vitest';
import { isMooncakeError, type MooncakeError } from '../../lib/errors';
import {
  DEFAULT_MAX_LENGTH,
  FrameDecoder,
  HandshakeType,
  MAX_MAX_LENGTH,
  decodeFrames,
  encodeFrame,
  encodeMessage,
  handshakeMaxLengthFromEnv,
  parseFrameJson,
  type Frame,
} from '../../lib/handshake/framing';
import { handFrame } from './raw';

const hex = (b: Buffer): string => b.toString('hex').toUpperCase().replace(/(..)(?!$)/g, '$1 ');

function thrown(fn: () => unknown): MooncakeError {
  try {
    fn();
  } catch (e) {
    if (isMooncakeError(e)) return e;
    throw e;
  }
  throw new Error('did not throw');
}

describe('encodeFrame / encodeMessage: byte-exact vectors', () => {
  it('Probe {} = 04 00 00 00 00 00 00 00 03 7B 7D 0A', () => {
    expect(hex(encodeMessage(HandshakeType.Probe, {}))).toBe('04 00 00 00 00 00 00 00 03 7B 7D 0A');
  });

  it('replies observed from a live upstream engine (0.3.13.post1)', () => {
    expect(encodeMessage(HandshakeType.Probe, { status: 'success' })).toEqual(
      Buffer.concat([Buffer.from('1600000000000000' + '03', 'hex'), Buffer.from('{"status":"success"}\n')]),
    );
    expect(encodeMessage(HandshakeType.Notify, { name: '', notify_msg: 'success' })).toEqual(
      Buffer.concat([Buffer.from('2400000000000000' + '02', 'hex'), Buffer.from('{"name":"","notify_msg":"success"}\n')]),
    );
    const empty = '{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}\n';
    expect(encodeFrame(HandshakeType.Connection, empty)).toEqual(Buffer.concat([Buffer.from('6f00000000000000' + '00', 'hex'), Buffer.from(empty)]));
    expect(encodeFrame(HandshakeType.Connection, empty, { oldProtocol: true })).toEqual(Buffer.concat([Buffer.from('6e00000000000000', 'hex'), Buffer.from(empty)]));
  });

  it('Notify request as upstream sendNotify writes it', () => {
    const f = encodeMessage(HandshakeType.Notify, { notify_msg: 'done', name: 'req-1' });
    expect(f.subarray(8).toString('latin1')).toBe('\x02{"name":"req-1","notify_msg":"done"}\n');
    expect(f.readBigUInt64LE(0)).toBe(BigInt(f.length - 8));
  });

  it('counts bytes, not characters, in the length', () => {
    const f = encodeFrame(HandshakeType.Metadata, '"\u00e9"\n');
    expect(f.readBigUInt64LE(0)).toBe(6n); // type + " + 2 bytes + " + \n
  });

  it('refuses untyped frames for anything but Connection, and unknown types', () => {
    expect(thrown(() => encodeFrame(HandshakeType.Probe, '{}\n', { oldProtocol: true })).code).toBe('INVALID_ARGUMENT');
    expect(thrown(() => encodeFrame(7 as HandshakeType, '{}\n')).code).toBe('INVALID_ARGUMENT');
  });
});

describe('FrameDecoder', () => {
  const samples: Buffer[] = [
    encodeMessage(HandshakeType.Probe, {}),
    encodeMessage(HandshakeType.Notify, { name: 'n\u00e9', notify_msg: 'x'.repeat(300) }),
    encodeMessage(HandshakeType.Metadata, { name: '127.0.0.1:1', buffers: [{ addr: 2n ** 62n, length: 1, name: 'a' }] }),
    encodeMessage(HandshakeType.Connection, {}, { oldProtocol: true }),
    encodeMessage(HandshakeType.Connection, { reply_msg: '' }),
  ];
  const stream = Buffer.concat(samples);
  const expected = (): Omit<Frame, 'payload'>[] => [
    { type: 3, oldProtocol: false },
    { type: 2, oldProtocol: false },
    { type: 1, oldProtocol: false },
    { type: 0, oldProtocol: true },
    { type: 0, oldProtocol: false },
  ];

  it('round-trips typed and untyped frames', () => {
    const frames = decodeFrames(stream);
    expect(frames.map(({ type, oldProtocol }) => ({ type, oldProtocol }))).toEqual(expected());
    expect(frames.map((f) => parseFrameJson(f))).toEqual([
      {},
      { name: 'n\u00e9', notify_msg: 'x'.repeat(300) },
      { name: '127.0.0.1:1', buffers: [{ addr: 2n ** 62n, length: 1, name: 'a' }] },
      {},
      { reply_msg: '' },
    ]);
    expect(frames[3]!.payload.toString()).toBe('{}\n');
  });

  it('yields the same frames when the stream is split at every byte boundary', () => {
    const whole = decodeFrames(stream).map((f) => f.payload.toString('hex'));
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new FrameDecoder();
      const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      d.end();
      expect(got.map((f) => f.payload.toString('hex'))).toEqual(whole);
    }
  });

  it('yields the same frames fed one byte at a time, and two cuts at every pair of points in a frame', () => {
    const d = new FrameDecoder();
    const got: Frame[] = [];
    for (const b of stream) got.push(...d.push(Buffer.from([b])));
    d.end();
    expect(got.map(({ type, oldProtocol }) => ({ type, oldProtocol }))).toEqual(expected());

    const one = samples[2]!;
    for (let i = 0; i <= one.length; i++) {
      for (let j = i; j <= one.length; j++) {
        const dd = new FrameDecoder();
        const fs = [...dd.push(one.subarray(0, i)), ...dd.push(one.subarray(i, j)), ...dd.push(one.subarray(j))];
        expect(fs).toHaveLength(1);
        expect(fs[0]!.payload.equals(one.subarray(9))).toBe(true);
      }
    }
  });

  it('reports buffered bytes and the pending length', () => {
    const d = new FrameDecoder();
    d.push(samples[1]!.subarray(0, 5));
    expect(d.buffered).toBe(5);
    expect(d.pendingLength).toBeUndefined();
    d.push(samples[1]!.subarray(5, 12));
    expect(d.pendingLength).toBe(samples[1]!.length - 8);
    expect(d.buffered).toBe(4);
  });

  it('treats a first payload byte above 3 as an untyped (OldProtocol) Connection frame', () => {
    for (const first of ['{', '[', '"', 'n', ' ', '\x04', '\x7f']) {
      const [f] = decodeFrames(handFrame(null, first + 'rest'));
      expect(f).toMatchObject({ type: 0, oldProtocol: true });
      expect(f!.payload.toString('latin1')).toBe(first + 'rest');
    }
    for (const t of [0, 1, 2, 3]) expect(decodeFrames(handFrame(t, '{}\n'))[0]).toMatchObject({ type: t, oldProtocol: false });
  });

  it('accepts a frame of exactly maxLength and refuses maxLength + 1 as soon as the prefix arrives', () => {
    const max = 64;
    const text = 'x'.repeat(max - 1);
    expect(decodeFrames(handFrame(1, text), { maxLength: max })).toHaveLength(1);
    const d = new FrameDecoder({ maxLength: max });
    const e = thrown(() => d.push(handFrame(1, text + 'y').subarray(0, 8)));
    expect(e.code).toBe('PROTOCOL_ERROR');
    expect(e.details).toMatchObject({ reason: 'too-long', length: 65, maxLength: 64 });
    // Broken for good: the same error again.
    expect(thrown(() => d.push(Buffer.from('x')))).toBe(e);
  });

  it('defaults to 1 MiB and refuses huge and u64-max lengths without allocating', () => {
    const d = new FrameDecoder();
    expect(d.maxLength).toBe(DEFAULT_MAX_LENGTH);
    expect(thrown(() => d.push(handFrame(3, '', BigInt(DEFAULT_MAX_LENGTH) + 1n).subarray(0, 8))).details).toMatchObject({ reason: 'too-long', length: DEFAULT_MAX_LENGTH + 1 });
    const huge = Buffer.alloc(8, 0xff);
    expect(thrown(() => new FrameDecoder().push(huge)).details).toMatchObject({ reason: 'too-long', length: '18446744073709551615' });
    // A big-endian length (what a peer of the other byte order would send) is just "too long".
    const be = Buffer.alloc(9);
    be.writeBigUInt64BE(4n, 0);
    expect(thrown(() => new FrameDecoder().push(be)).details).toMatchObject({ reason: 'too-long' });
  });

  it('refuses a zero length', () => {
    expect(thrown(() => new FrameDecoder().push(Buffer.alloc(8))).details).toMatchObject({ reason: 'zero-length' });
  });

  it('end() reports a truncated frame', () => {
    const d = new FrameDecoder();
    d.push(samples[0]!.subarray(0, 10));
    const e = thrown(() => d.end());
    expect(e.code).toBe('PROTOCOL_ERROR');
    expect(e.details).toMatchObject({ reason: 'truncated', buffered: 2, length: 4 });
    const d2 = new FrameDecoder();
    d2.push(Buffer.from([1, 0, 0]));
    expect(thrown(() => d2.end()).details).toMatchObject({ reason: 'truncated', buffered: 3 });
    const d3 = new FrameDecoder();
    d3.push(samples[0]!);
    expect(() => d3.end()).not.toThrow();
  });

  it('accepts only a positive integer maxLength', () => {
    for (const bad of [0, -1, 1.5, NaN]) expect(thrown(() => new FrameDecoder({ maxLength: bad })).code).toBe('INVALID_ARGUMENT');
  });

  it('hands malformed JSON to parseFrameJson as MALFORMED_JSON (empty typed frame included)', () => {
    expect(thrown(() => parseFrameJson(decodeFrames(handFrame(3, ''))[0]!)).code).toBe('MALFORMED_JSON');
    expect(thrown(() => parseFrameJson(decodeFrames(handFrame(3, '{"a":'))[0]!)).code).toBe('MALFORMED_JSON');
    expect(thrown(() => parseFrameJson(decodeFrames(handFrame(null, 'GET / HTTP/1.1\r\n'))[0]!)).code).toBe('MALFORMED_JSON');
  });
});

describe('handshakeMaxLengthFromEnv (MC_HANDSHAKE_MAX_LENGTH)', () => {
  it('accepts 1 MiB..128 MiB in plain decimal bytes, else the 1 MiB default', () => {
    const f = (v?: string): number => handshakeMaxLengthFromEnv(v === undefined ? {} : { MC_HANDSHAKE_MAX_LENGTH: v });
    expect(f()).toBe(1 << 20);
    expect(f(String(4 << 20))).toBe(4 << 20);
    expect(f(String(MAX_MAX_LENGTH))).toBe(MAX_MAX_LENGTH);
    expect(f(String(MAX_MAX_LENGTH + 1))).toBe(1 << 20);
    expect(f('1024')).toBe(1 << 20);
    expect(f('4MB')).toBe(1 << 20);
    expect(f(' 4194304')).toBe(1 << 20);
    expect(f('')).toBe(1 << 20);
  });
});
