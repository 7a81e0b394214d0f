import { describe, expect, it } from 'vitest';
import { isMooncakeError } from '../../lib/errors';
import { RawJson, messageText, parseJson, quoteFast, stringifyFast } from '../../lib/handshake/json';

describe('stringifyFast (jsoncpp FastWriter)', () => {
  it('writes compact JSON with byte-ordered keys and a trailing newline', () => {
    expect(stringifyFast({})).toBe('{}\n');
    expect(stringifyFast({ status: 'success' })).toBe('{"status":"success"}\n');
    expect(stringifyFast({ notify_msg: 'success', name: '' })).toBe('{"name":"","notify_msg":"success"}\n');
    expect(stringifyFast(null)).toBe('null\n');
    expect(stringifyFast([])).toBe('[]\n');
    expect(stringifyFast({ b: [1, true, null, { z: 0, a: -1 }], a: 'x' })).toBe('{"a":"x","b":[1,true,null,{"a":-1,"z":0}]}\n');
    // Byte order, not locale order: uppercase before lowercase, '_' (0x5f) between them.
    expect(stringifyFast({ b: 1, B: 2, _: 3, a: 4 })).toBe('{"B":2,"_":3,"a":4,"b":1}\n');
    // UTF-8 byte order differs from UTF-16 order for U+FF5E vs U+1F600.
    expect(stringifyFast({ '\u{1F600}': 1, '\uFF5E': 2 })).toBe('{"\\uff5e":2,"\\ud83d\\ude00":1}\n');
  });

  it('writes the all-empty HandShakeDesc exactly as upstream TCP replies it', () => {
    const desc = { payload: '', local_nic_path: '', local_lid: 0, local_gid: '', peer_nic_path: '', qp_num: [], reply_msg: '' };
    expect(stringifyFast(desc)).toBe('{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}\n');
  });

  it('escapes like jsoncpp: non-ASCII as lowercase \\u, surrogate pairs, control chars; "/" and DEL raw', () => {
    // Observed live from 0.3.13.post1: a segment named h\u00e9\u20ac\u{1F600}\x7f/x"q.
    expect(quoteFast('h\u00e9\u20ac\u{1F600}\x7f/x"q')).toBe('"h\\u00e9\\u20ac\\ud83d\\ude00\x7f/x\\"q"');
    expect(quoteFast('\b\f\n\r\t\\\u0000\u001f ')).toBe('"\\b\\f\\n\\r\\t\\\\\\u0000\\u001f "');
  });

  it('writes bigint and safe integers as bare integers, doubles as %.17g', () => {
    expect(stringifyFast({ addr: 18446744073709551615n, length: 1073741824 })).toBe('{"addr":18446744073709551615,"length":1073741824}\n');
    expect(stringifyFast(0.1)).toBe('0.10000000000000001\n');
    expect(stringifyFast(1.5)).toBe('1.5\n');
    expect(stringifyFast(2 ** 60)).toBe('1.152921504606847e+18\n');
    expect(stringifyFast(1e-7)).toBe('9.9999999999999995e-08\n');
    expect(stringifyFast(-0)).toBe('-0.0\n');
    expect(stringifyFast(NaN)).toBe('null\n');
    expect(stringifyFast(Infinity)).toBe('1e+9999\n');
  });

  it('omits undefined members and refuses functions and symbols', () => {
    expect(stringifyFast({ a: undefined, b: 1 })).toBe('{"b":1}\n');
    expect(() => stringifyFast({ f: () => 1 })).toThrow(/cannot encode/);
  });
});

describe('parseJson', () => {
  it('accepts upstream text with its trailing newline, and surrounding whitespace or a BOM', () => {
    expect(parseJson('{"status":"success"}\n')).toEqual({ status: 'success' });
    expect(parseJson('\ufeff \t[1, 2]\r\n')).toEqual([1, 2]);
    expect(parseJson(Buffer.from('null\n'))).toBe(null);
  });

  it('keeps integers beyond 2^53 exact as bigint, others as number', () => {
    const v = parseJson('{"addr":140245863022608,"big":18446744073709551615,"neg":-9007199254740993,"f":1.5e3,"e":1E2}') as Record<string, unknown>;
    expect(v.addr).toBe(140245863022608);
    expect(v.big).toBe(18446744073709551615n);
    expect(v.neg).toBe(-9007199254740993n);
    expect(v.f).toBe(1500);
    expect(v.e).toBe(100);
  });

  it('decodes escapes and surrogate pairs', () => {
    expect(parseJson('"a\\u00e9\\ud83d\\ude00\\/\\n"')).toBe('a\u00e9\u{1F600}/\n');
  });

  it('keeps "__proto__" as an own member without touching the prototype', () => {
    const v = parseJson('{"__proto__":{"polluted":true},"a":1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['__proto__', 'a']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it.each([
    ['', 'empty'],
    ['\n', 'only whitespace'],
    ['{', 'unterminated object'],
    ['{"a":1,}', 'trailing comma'],
    ['{}x', 'trailing data'],
    ['{} {}', 'two values'],
    ["{'a':1}", 'single quotes'],
    ['// c\n{}', 'comment'],
    ['01', 'leading zero'],
    ['-', 'lone minus'],
    ['1.', 'bare decimal point'],
    ['"\\x"', 'bad escape'],
    ['"\\u12g4"', 'bad unicode escape'],
    ['"abc', 'unterminated string'],
    ['tru', 'bad literal'],
    ['\x01', 'control byte'],
  ])('rejects %j (%s) with MALFORMED_JSON', (text) => {
    let err: unknown;
    try {
      parseJson(text);
    } catch (e) {
      err = e;
    }
    expect(isMooncakeError(err, 'MALFORMED_JSON')).toBe(true);
  });

  it('refuses nesting deeper than 1000 without overflowing the stack', () => {
    expect(() => parseJson('['.repeat(100_000) + ']'.repeat(100_000))).toThrow(/nested too deeply/);
    expect(parseJson('['.repeat(500) + ']'.repeat(500))).toBeInstanceOf(Array);
  });

  it('round-trips what it writes', () => {
    const v = { name: '127.0.0.1:12345', buffers: [{ addr: 2n ** 63n + 5n, length: 4096, name: 'x\u{1F600}' }], tcp_proto_version: 2, ok: true, n: null };
    expect(parseJson(stringifyFast(v))).toEqual(v);
  });
});

describe('messageText', () => {
  it('passes RawJson through, adding the newline if missing, after validating it', () => {
    expect(messageText(new RawJson('{"b":1,"a":2}'))).toBe('{"b":1,"a":2}\n');
    expect(messageText(new RawJson('{"a":2}\n'))).toBe('{"a":2}\n');
    expect(() => messageText(new RawJson('{nope'))).toThrow(/offset/);
  });
});
