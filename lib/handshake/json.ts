/**
 * JSON text as upstream Mooncake writes and reads it on the handshake socket.
 *
 * Writing mirrors jsoncpp's `Json::FastWriter` (confirmed against a live 0.3.13.post1 engine):
 * compact, object keys in byte order (jsoncpp keeps members in a std::map), every non-ASCII
 * character escaped as lowercase `\uXXXX` (surrogate pairs above the BMP), control characters as
 * `\u00XX` except the short escapes, `/` and DEL left raw, and a trailing `\n`.
 *
 * Reading is a strict JSON parser that keeps integers outside the safe range as `bigint` (segment
 * descriptors carry 64-bit addresses as bare integers) and never lets a key such as `__proto__`
 * touch an object's prototype. Deliberate differences from jsoncpp's lenient reader: no comments,
 * nothing but whitespace after the root value; raw control characters inside strings are accepted
 * as jsoncpp does. Nesting deeper than 1000 levels is refused (jsoncpp's stack limit).
 *
 * Pure functions, no I/O.
 */

import { MooncakeError } from '../errors';

export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/**
 * JSON text passed through verbatim (for example a descriptor the native engine already
 * serialized). It is validated before it is sent, and a missing trailing newline is added.
 */
export class RawJson {
  constructor(readonly text: string) {}
}

const MAX_DEPTH = 1000;

// ---------------------------------------------------------------------------------------------
// Writer

const HEX = '0123456789abcdef';

function hex4(code: number): string {
  return HEX[(code >> 12) & 15]! + HEX[(code >> 8) & 15]! + HEX[(code >> 4) & 15]! + HEX[code & 15]!;
}

/** A string quoted the way FastWriter quotes it. */
export function quoteFast(s: string): string {
  let out = '"';
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let esc: string | undefined;
    if (c === 0x22) esc = '\\"';
    else if (c === 0x5c) esc = '\\\\';
    else if (c < 0x20) {
      esc = c === 0x08 ? '\\b' : c === 0x0c ? '\\f' : c === 0x0a ? '\\n' : c === 0x0d ? '\\r' : c === 0x09 ? '\\t' : '\\u' + hex4(c);
    } else if (c >= 0x80) {
      // UTF-16 code units are exactly the \u escapes jsoncpp produces from UTF-8 (a lone surrogate
      // cannot come from valid UTF-8; it is escaped as itself).
      esc = '\\u' + hex4(c);
    }
    if (esc !== undefined) {
      if (i > start) out += s.slice(start, i);
      out += esc;
      start = i + 1;
    }
  }
  if (start < s.length) out += s.slice(start);
  return out + '"';
}

/** A double formatted as jsoncpp does: printf("%.17g"), then ".0" if it looks like an integer. */
function formatDouble(x: number): string {
  if (Number.isNaN(x)) return 'null';
  if (x === Infinity) return '1e+9999';
  if (x === -Infinity) return '-1e+9999';
  let s: string;
  if (x === 0) {
    s = Object.is(x, -0) ? '-0' : '0';
  } else {
    // %.17g: exponent form when exp < -4 or exp >= 17, trailing zeros stripped.
    const [mant, expStr] = x.toExponential(16).split('e') as [string, string];
    const exp = Number(expStr);
    if (exp < -4 || exp >= 17) {
      let m = mant.includes('.') ? mant.replace(/0+$/, '').replace(/\.$/, '') : mant;
      if (m === '') m = '0';
      const ae = Math.abs(exp);
      s = `${m}e${exp < 0 ? '-' : '+'}${ae < 10 ? '0' : ''}${ae}`;
    } else {
      s = x.toFixed(Math.max(0, 16 - exp));
      if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
    }
  }
  if (!/[.e]/.test(s)) s += '.0';
  return s;
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function writeValue(v: unknown, depth: number): string {
  if (depth > MAX_DEPTH) throw new MooncakeError('INVALID_ARGUMENT', 'JSON value nested too deeply');
  if (v === null || v === undefined) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'bigint':
      return v.toString();
    case 'number':
      return Number.isSafeInteger(v) && !Object.is(v, -0) ? String(v) : formatDouble(v);
    case 'string':
      return quoteFast(v);
    case 'object': {
      if (Array.isArray(v)) {
        return '[' + v.map((e) => writeValue(e, depth + 1)).join(',') + ']';
      }
      if (v instanceof RawJson) throw new MooncakeError('INVALID_ARGUMENT', 'RawJson can only be a whole message');
      const keys = Object.keys(v).filter((k) => (v as Record<string, unknown>)[k] !== undefined);
      keys.sort(byteOrder);
      return '{' + keys.map((k) => quoteFast(k) + ':' + writeValue((v as Record<string, unknown>)[k], depth + 1)).join(',') + '}';
    }
    default:
      throw new MooncakeError('INVALID_ARGUMENT', `cannot encode a ${typeof v} as JSON`);
  }
}

/**
 * `Json::FastWriter{}.write(value)`: compact JSON with sorted keys and a trailing newline.
 * `undefined` members are omitted; `undefined` at the top level is written as `null`.
 */
export function stringifyFast(value: unknown): string {
  return writeValue(value, 0) + '\n';
}

// ---------------------------------------------------------------------------------------------
// Reader

function malformed(message: string, pos: number): MooncakeError {
  return new MooncakeError('MALFORMED_JSON', `${message} at offset ${pos}`, { details: { offset: pos } });
}

class Parser {
  pos = 0;
  constructor(private readonly s: string) {}

  ws(): void {
    const s = this.s;
    while (this.pos < s.length) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.pos++;
      else break;
    }
  }

  value(depth: number): JsonValue {
    if (depth > MAX_DEPTH) throw malformed('JSON nested too deeply', this.pos);
    this.ws();
    const s = this.s;
    if (this.pos >= s.length) throw malformed('unexpected end of JSON', this.pos);
    const c = s[this.pos]!;
    switch (c) {
      case '{':
        return this.object(depth);
      case '[':
        return this.array(depth);
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number();
        throw malformed(`unexpected character ${JSON.stringify(c)}`, this.pos);
    }
  }

  literal<T extends JsonValue>(word: string, v: T): T {
    if (!this.s.startsWith(word, this.pos)) throw malformed('invalid literal', this.pos);
    this.pos += word.length;
    return v;
  }

  number(): number | bigint {
    const s = this.s;
    const start = this.pos;
    if (s[this.pos] === '-') this.pos++;
    const digitsStart = this.pos;
    if (s[this.pos] === '0') this.pos++;
    else if (s[this.pos]! >= '1' && s[this.pos]! <= '9') while (s[this.pos]! >= '0' && s[this.pos]! <= '9') this.pos++;
    else throw malformed('invalid number', start);
    let integral = true;
    if (s[this.pos] === '.') {
      integral = false;
      this.pos++;
      const d = this.pos;
      while (s[this.pos]! >= '0' && s[this.pos]! <= '9') this.pos++;
      if (this.pos === d) throw malformed('invalid number', start);
    }
    if (s[this.pos] === 'e' || s[this.pos] === 'E') {
      integral = false;
      this.pos++;
      if (s[this.pos] === '+' || s[this.pos] === '-') this.pos++;
      const d = this.pos;
      while (s[this.pos]! >= '0' && s[this.pos]! <= '9') this.pos++;
      if (this.pos === d) throw malformed('invalid number', start);
    }
    const text = s.slice(start, this.pos);
    if (integral && this.pos - digitsStart > 15) {
      const n = Number(text);
      if (!Number.isSafeInteger(n)) return BigInt(text);
      return n;
    }
    return Number(text);
  }

  string(): string {
    const s = this.s;
    const start = this.pos;
    this.pos++; // opening quote
    let out = '';
    let run = this.pos;
    for (;;) {
      if (this.pos >= s.length) throw malformed('unterminated string', start);
      const c = s.charCodeAt(this.pos);
      if (c === 0x22) {
        out += s.slice(run, this.pos);
        this.pos++;
        return out;
      }
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += s.slice(run, this.pos);
      const e = s[this.pos + 1];
      this.pos += 2;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const h = s.slice(this.pos, this.pos + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) throw malformed('invalid \\u escape', this.pos - 2);
          out += String.fromCharCode(parseInt(h, 16));
          this.pos += 4;
          break;
        }
        default:
          throw malformed('invalid escape', this.pos - 2);
      }
      run = this.pos;
    }
  }

  array(depth: number): JsonValue[] {
    this.pos++;
    const out: JsonValue[] = [];
    this.ws();
    if (this.s[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === ']') {
        this.pos++;
        return out;
      }
      throw malformed("expected ',' or ']'", this.pos);
    }
  }

  object(depth: number): JsonObject {
    this.pos++;
    const out: JsonObject = {};
    this.ws();
    if (this.s[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s[this.pos] !== '"') throw malformed('expected a member name', this.pos);
      const key = this.string();
      this.ws();
      if (this.s[this.pos] !== ':') throw malformed("expected ':'", this.pos);
      this.pos++;
      const v = this.value(depth + 1);
      // defineProperty: a "__proto__" member stays an own data property.
      Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
      this.ws();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === '}') {
        this.pos++;
        return out;
      }
      throw malformed("expected ',' or '}'", this.pos);
    }
  }
}

/**
 * Parses JSON text (a leading BOM and surrounding whitespace, including upstream's trailing
 * newline, are allowed). Throws MooncakeError('MALFORMED_JSON') on anything else.
 */
export function parseJson(text: string | Uint8Array): JsonValue {
  let s = typeof text === 'string' ? text : Buffer.from(text.buffer, text.byteOffset, text.byteLength).toString('utf8');
  if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
  const p = new Parser(s);
  const v = p.value(0);
  p.ws();
  if (p.pos !== s.length) throw malformed('unexpected data after the JSON value', p.pos);
  return v;
}

/** The text to send for a message body: FastWriter output, or validated raw text ending in `\n`. */
export function messageText(body: unknown): string {
  if (body instanceof RawJson) {
    parseJson(body.text);
    return body.text.endsWith('\n') ? body.text : body.text + '\n';
  }
  return stringifyFast(body);
}

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
