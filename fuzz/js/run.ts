/**
 * A small coverage-guided mutation fuzzer for the TypeScript parsers (run by scripts/fuzz.sh).
 *
 * jazzer.js would be the natural tool, but its only install path here is a prebuilt addon that needs
 * glibc 2.38 (Debian 12 has 2.36), and its source build downloads from GitHub. This harness does the
 * same job in plain Node:
 *   - coverage: V8's precise block coverage through node:inspector (Profiler.takePreciseCoverage,
 *     which also resets the counters), restricted to the compiled lib/ files. A feature is a covered
 *     block with its hit count in a power-of-two bucket (as AFL and libFuzzer count); an input that
 *     reaches a new feature joins the corpus;
 *   - mutations: libFuzzer's usual ones (bit/byte flips, interesting integers, insert/erase/duplicate
 *     ranges, splice with another corpus entry, dictionary tokens) and, for JSON inputs, structure-
 *     aware ones half the time (replace, delete or add a member with a value drawn from the target's
 *     dictionary, integers past 2^53 included); a deterministic PRNG (--seed, default 1), so a run is
 *     reproducible given the same corpus and the same coverage;
 *   - a crash is any exception the target does not allow (see targets.ts); its input is written to
 *     <artifacts>/<target>-crash-<sha1> and the process exits 1.
 *
 *   node run.js --target handshake --seconds 30 --corpus fuzz/corpus-run/handshake \
 *     --seeds fuzz/corpus/handshake --artifacts fuzz/corpus-run [--seed 1] [--max-len 4096]
 *   node run.js --target handshake --replay <file...>     (runs inputs once, e.g. a crash)
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import * as path from 'node:path';
import { TARGETS, type Target } from './targets';

interface Args {
  target: string;
  seconds: number;
  corpus?: string;
  seeds: string[];
  artifacts: string;
  seed: number;
  maxLen: number;
  replay: string[];
  coverage: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { target: '', seconds: 30, seeds: [], artifacts: '.', seed: 1, maxLen: 4096, replay: [], coverage: true };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--target') a.target = v();
    else if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--corpus') a.corpus = v();
    else if (k === '--seeds') a.seeds.push(v());
    else if (k === '--artifacts') a.artifacts = v();
    else if (k === '--seed') a.seed = Number(v());
    else if (k === '--max-len') a.maxLen = Number(v());
    else if (k === '--no-coverage') a.coverage = false;
    else if (k === '--replay') a.replay.push(...argv.slice(i + 1)), (i = argv.length);
    else throw new Error(`unknown argument ${k}`);
  }
  if (!TARGETS[a.target]) throw new Error(`--target must be one of ${Object.keys(TARGETS).join(', ')}`);
  return a;
}

// xorshift128+: deterministic for a given --seed.
class Rng {
  private s0: bigint;
  private s1: bigint;
  constructor(seed: number) {
    this.s0 = BigInt(seed) * 0x9e3779b97f4a7c15n + 1n;
    this.s1 = (BigInt(seed) ^ 0xdeadbeefn) * 0xbf58476d1ce4e5b9n + 7n;
    for (let i = 0; i < 8; i++) this.next();
  }
  private next(): bigint {
    const m = (1n << 64n) - 1n;
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x = (x ^ (x << 23n)) & m;
    this.s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return (this.s1 + y) & m;
  }
  /** Uniform in [0, n). */
  int(n: number): number {
    return Number(this.next() % BigInt(Math.max(1, n)));
  }
  bool(): boolean {
    return this.int(2) === 0;
  }
}

const INTERESTING_8 = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x20, 0x0a, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x3a, 0x2c];
const INTERESTING_64 = [0n, 1n, 4n, 9n, 0xffn, 0x100000n, 0x100001n, 0x7fffffffn, 0xffffffffn, 0x7fffffffffffffffn, 0xffffffffffffffffn];

/** A number kept as its JSON text (so the mutator can write integers past 2^53 exactly). */
class RawNumber {
  constructor(readonly text: string) {}
}
type Tree = null | boolean | number | string | RawNumber | Tree[] | { [k: string]: Tree };

function serialize(v: Tree): string {
  if (v instanceof RawNumber) return v.text;
  if (Array.isArray(v)) return '[' + v.map(serialize).join(',') + ']';
  if (v !== null && typeof v === 'object') return '{' + Object.keys(v).map((k) => JSON.stringify(k) + ':' + serialize(v[k]!)).join(',') + '}';
  return JSON.stringify(v) ?? 'null';
}

const VALUE_NUMBERS = ['0', '-1', '1', '2', '3', '7', '65535', '65536', '1e3', '1.5', '-0', '9007199254740993', '18446744073709551616', '1e400'];

class Mutator {
  constructor(
    private readonly rng: Rng,
    private readonly dict: Buffer[],
    private readonly maxLen: number,
    /** Bytes before the JSON text, for targets whose input is JSON (undefined: not JSON). */
    private readonly jsonPrefix: number | undefined,
  ) {}

  mutate(input: Buffer, other: Buffer | undefined): Buffer {
    let b: Buffer = Buffer.from(input);
    // Structure-aware half the time on JSON targets: change values, not bytes.
    if (this.jsonPrefix !== undefined && this.rng.bool()) {
      const t = this.mutateJson(b, this.jsonPrefix);
      if (t) return t.length > this.maxLen ? t.subarray(0, this.maxLen) : t;
    }
    const rounds = 1 + this.rng.int(4);
    for (let r = 0; r < rounds; r++) b = this.once(b, other);
    return b.length > this.maxLen ? b.subarray(0, this.maxLen) : b;
  }

  private randomValue(depth: number): Tree {
    const rng = this.rng;
    switch (rng.int(depth > 2 ? 5 : 7)) {
      case 0: return null;
      case 1: return rng.bool();
      case 2: return new RawNumber(VALUE_NUMBERS[rng.int(VALUE_NUMBERS.length)]!);
      case 3:
      case 4: {
        const words = this.dict.map((d) => d.toString('utf8')).filter((w) => /^".*"$/.test(w));
        if (words.length > 0 && rng.int(4) > 0) return JSON.parse(words[rng.int(words.length)]!) as string;
        return ['', ' ', 'x', '7', ' 7 ', '-1', 'a/b', 'é', '\u0000'][rng.int(9)]!;
      }
      case 5: return [this.randomValue(depth + 1)];
      default: {
        const words = this.dict.map((d) => d.toString('utf8')).filter((w) => /^".*"$/.test(w));
        const k = words.length > 0 ? (JSON.parse(words[rng.int(words.length)]!) as string) : 'k';
        return { [k]: this.randomValue(depth + 1) };
      }
    }
  }

  /** Replaces, deletes or adds one member somewhere in the JSON tree; undefined if not JSON. */
  private mutateJson(b: Buffer, prefix: number): Buffer | undefined {
    let root: Tree;
    try {
      root = JSON.parse(b.subarray(prefix).toString('utf8')) as Tree;
    } catch {
      return undefined;
    }
    const containers: (Tree[] | { [k: string]: Tree })[] = [];
    const walk = (v: Tree): void => {
      if (v !== null && typeof v === 'object' && !(v instanceof RawNumber)) {
        containers.push(v);
        for (const x of Array.isArray(v) ? v : Object.values(v)) walk(x);
      }
    };
    walk(root);
    if (containers.length === 0) return undefined;
    const rng = this.rng;
    const c = containers[rng.int(containers.length)]!;
    if (Array.isArray(c)) {
      if (c.length > 0 && rng.bool()) c[rng.int(c.length)] = this.randomValue(1);
      else c.push(this.randomValue(1));
    } else {
      const keys = Object.keys(c);
      const op = rng.int(4);
      if (keys.length > 0 && op < 2) c[keys[rng.int(keys.length)]!] = this.randomValue(1);
      else if (keys.length > 0 && op === 2) delete c[keys[rng.int(keys.length)]!];
      else {
        const words = this.dict.map((d) => d.toString('utf8')).filter((w) => /^".*"$/.test(w));
        c[words.length > 0 ? (JSON.parse(words[rng.int(words.length)]!) as string) : 'extra'] = this.randomValue(1);
      }
    }
    return Buffer.concat([b.subarray(0, prefix), Buffer.from(serialize(root))]);
  }

  private once(b: Buffer, other: Buffer | undefined): Buffer {
    const rng = this.rng;
    const at = (n: number): number => rng.int(n + 1);
    switch (rng.int(11)) {
      case 0: { // flip a bit
        if (b.length === 0) return Buffer.from([rng.int(256)]);
        const c = Buffer.from(b);
        c[rng.int(c.length)]! ^= 1 << rng.int(8);
        return c;
      }
      case 1: { // random or interesting byte
        if (b.length === 0) return Buffer.from([rng.int(256)]);
        const c = Buffer.from(b);
        c[rng.int(c.length)] = rng.bool() ? rng.int(256) : INTERESTING_8[rng.int(INTERESTING_8.length)]!;
        return c;
      }
      case 2: { // insert random bytes
        const n = 1 + rng.int(8);
        const ins = Buffer.alloc(n);
        for (let i = 0; i < n; i++) ins[i] = rng.int(256);
        const p = at(b.length);
        return Buffer.concat([b.subarray(0, p), ins, b.subarray(p)]);
      }
      case 3: { // erase a range
        if (b.length < 2) return b;
        const p = rng.int(b.length);
        const n = 1 + rng.int(Math.min(16, b.length - p));
        return Buffer.concat([b.subarray(0, p), b.subarray(p + n)]);
      }
      case 4: { // duplicate a range somewhere
        if (b.length === 0) return b;
        const p = rng.int(b.length);
        const n = 1 + rng.int(Math.min(64, b.length - p));
        const q = at(b.length);
        return Buffer.concat([b.subarray(0, q), b.subarray(p, p + n), b.subarray(q)]);
      }
      case 5: { // dictionary token
        if (this.dict.length === 0) return b;
        const tok = this.dict[rng.int(this.dict.length)]!;
        const p = at(b.length);
        if (rng.bool()) return Buffer.concat([b.subarray(0, p), tok, b.subarray(p)]);
        return Buffer.concat([b.subarray(0, p), tok, b.subarray(Math.min(b.length, p + tok.length))]);
      }
      case 6: { // interesting u64, little-endian (frame lengths)
        if (b.length < 8) return Buffer.concat([b, Buffer.alloc(8)]);
        const c = Buffer.from(b);
        c.writeBigUInt64LE(INTERESTING_64[rng.int(INTERESTING_64.length)]!, rng.int(c.length - 7));
        return c;
      }
      case 7: { // splice with another input
        if (!other || other.length === 0) return b;
        const p = at(b.length);
        const q = rng.int(other.length);
        return Buffer.concat([b.subarray(0, p), other.subarray(q, q + 1 + rng.int(other.length - q))]);
      }
      case 8: { // ASCII digit run (numbers in JSON)
        const p = at(b.length);
        const n = 1 + rng.int(24);
        let s = rng.bool() ? '-' : '';
        for (let i = 0; i < n; i++) s += String(rng.int(10));
        return Buffer.concat([b.subarray(0, p), Buffer.from(s), b.subarray(p)]);
      }
      case 9: { // change an ASCII digit
        const digits: number[] = [];
        for (let i = 0; i < b.length; i++) if (b[i]! >= 0x30 && b[i]! <= 0x39) digits.push(i);
        if (digits.length === 0) return b;
        const c = Buffer.from(b);
        c[digits[rng.int(digits.length)]!] = 0x30 + rng.int(10);
        return c;
      }
      default: { // truncate
        if (b.length === 0) return b;
        return b.subarray(0, rng.int(b.length));
      }
    }
  }
}

function loadDir(dir: string | undefined): Buffer[] {
  if (!dir || !fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((f) => path.join(dir, f))
    .filter((f) => fs.statSync(f).isFile())
    .map((f) => fs.readFileSync(f));
}

function sha1(b: Buffer): string {
  return createHash('sha1').update(b).digest('hex');
}

/** Precise block coverage of the compiled lib/ files, as a set of features. */
class Coverage {
  private readonly session = new inspector.Session();
  private readonly seen = new Set<string>();
  constructor(private readonly filter: (url: string) => boolean) {
    this.session.connect();
    this.post('Profiler.enable');
    this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  }
  private post(method: string, params?: object): any {
    let result: any;
    let error: Error | null = null;
    // The in-process session answers synchronously.
    this.session.post(method, params, (err: Error | null, res: any) => {
      error = err;
      result = res;
    });
    if (error) throw error;
    return result;
  }
  /** Takes (and resets) the counters; returns how many features were new. */
  collect(): number {
    const res = this.post('Profiler.takePreciseCoverage') as { result: { scriptId: string; url: string; functions: { ranges: { startOffset: number; endOffset: number; count: number }[] }[] }[] };
    let fresh = 0;
    for (const script of res.result) {
      if (!this.filter(script.url)) continue;
      for (const fn of script.functions) {
        for (const r of fn.ranges) {
          if (r.count === 0) continue;
          const bucket = r.count >= 128 ? 8 : 32 - Math.clz32(r.count);
          const key = `${script.scriptId}:${r.startOffset}:${r.endOffset}:${bucket}`;
          if (!this.seen.has(key)) {
            this.seen.add(key);
            fresh++;
          }
        }
      }
    }
    return fresh;
  }
  /** Covered blocks (cov) and block/bucket features (ft) so far. */
  stats(): { cov: number; ft: number } {
    const blocks = new Set<string>();
    for (const k of this.seen) blocks.add(k.slice(0, k.lastIndexOf(':')));
    return { cov: blocks.size, ft: this.seen.size };
  }
}

function runOnce(target: Target, input: Buffer): Error | undefined {
  try {
    target.fn(input);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const target = TARGETS[args.target]!;

  if (args.replay.length > 0) {
    let bad = 0;
    for (const f of args.replay) {
      const err = runOnce(target, fs.readFileSync(f));
      console.log(`${f}: ${err ? `CRASH ${err.stack}` : 'ok'}`);
      if (err) bad++;
    }
    process.exit(bad > 0 ? 1 : 0);
  }

  const libDir = path.resolve(__dirname, '..', '..', 'lib');
  const cov = args.coverage ? new Coverage((url) => url.includes(libDir)) : undefined;
  const rng = new Rng(args.seed);
  const mutator = new Mutator(rng, target.dict.map((t) => Buffer.from(t)), args.maxLen, target.jsonPrefix);
  if (args.corpus) fs.mkdirSync(args.corpus, { recursive: true });
  fs.mkdirSync(args.artifacts, { recursive: true });

  const crash = (input: Buffer, err: Error): never => {
    const file = path.join(args.artifacts, `${args.target}-crash-${sha1(input)}`);
    fs.writeFileSync(file, input);
    console.log(`CRASH in ${args.target}: ${err.stack ?? err.message}`);
    console.log(`input (${input.length} bytes) written to ${file}; base64: ${input.toString('base64').slice(0, 400)}`);
    process.exit(1);
  };

  const corpus: Buffer[] = [];
  const known = new Set<string>();
  const initial = [...loadDir(args.corpus), ...args.seeds.flatMap((d) => loadDir(d))];
  if (initial.length === 0) initial.push(Buffer.alloc(0));
  let execs = 0;
  for (const input of initial) {
    const err = runOnce(target, input);
    execs++;
    if (err) crash(input, err);
    const fresh = cov ? cov.collect() : 0;
    const h = sha1(input);
    if (!known.has(h) && (fresh > 0 || !cov || corpus.length === 0)) {
      known.add(h);
      corpus.push(input);
    }
  }
  const report = (tag: string): void => {
    const s = cov ? cov.stats() : { cov: 0, ft: 0 };
    const secs = (Date.now() - t0) / 1000;
    console.log(`${tag} execs: ${execs} cov: ${s.cov} ft: ${s.ft} corp: ${corpus.length} exec/s: ${Math.round(execs / Math.max(secs, 0.001))} crashes: 0`);
  };
  const t0 = Date.now();
  report('INITED');
  const deadline = t0 + args.seconds * 1000;
  let nextReport = t0 + 10_000;
  let added = 0;
  while (Date.now() < deadline) {
    for (let i = 0; i < 64; i++) {
      const base = corpus[rng.int(corpus.length)]!;
      const other = corpus[rng.int(corpus.length)];
      const input = mutator.mutate(base, other);
      const err = runOnce(target, input);
      execs++;
      if (err) crash(input, err);
      if (cov && cov.collect() > 0) {
        const h = sha1(input);
        if (!known.has(h)) {
          known.add(h);
          corpus.push(input);
          added++;
          if (args.corpus) fs.writeFileSync(path.join(args.corpus, h), input);
        }
      }
    }
    if (Date.now() >= nextReport) {
      report('#');
      nextReport += 10_000;
    }
  }
  report('DONE');
  console.log(`new corpus entries this run: ${added}`);
}

main();
