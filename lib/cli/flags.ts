/**
 * The one command-line flag parser: every `mooncake-node` subcommand declares its flags as data and gets the
 * same spellings, the same strictness and the same error style.
 *
 * - `--name value`, `--name=value`, and gflags' `-name=value` / `-name value` (upstream's
 *   transfer_engine_bench style). Every name also answers to its underscore spelling (`--block_size`).
 * - Booleans: `--json`, `--json=true`, `--json=false`; a negatable one (default true) also `--no-name`.
 *   Anything else (`--json=yes`) is refused.
 * - Lists take every value up to the next flag (`--prefiller-hosts a b c`), as Python's argparse `nargs='+'`.
 * - A flag given twice, an unknown flag (with a suggestion), a missing or malformed value: one
 *   MooncakeError('INVALID_CONFIG') whose message starts with the flag, e.g. `--port="abc": expected an integer`.
 */
import { MooncakeError, describeValue } from '../errors';
import { integerRange } from '../util/options';

export type FlagType = 'string' | 'int' | 'number' | 'size' | 'boolean' | 'list';

export interface FlagSpec {
  type: FlagType;
  /** One line of help. */
  help: string;
  /** Placeholder of the value in the help text (default by type: N, S, SIZE, VALUE). */
  arg?: string;
  /** Other names, e.g. upstream's spelling. Underscore spellings of every name are accepted without listing them. */
  aliases?: readonly string[];
  /** One-letter form, e.g. 'h' for -h. */
  short?: string;
  /** Accepted values (string and list flags). */
  choices?: readonly string[];
  /** Bounds for int, number and size flags (inclusive). */
  min?: number;
  max?: number;
  /** Applied when the flag is absent (and shown in the help). */
  default?: string | number | boolean | readonly string[];
  /** What the help says the default is, when it is computed rather than fixed. */
  defaultText?: string;
  /** Boolean flags whose default is true: `--no-<name>` turns them off (and the help shows that form). */
  negatable?: boolean;
  /** Accepted but not listed in the help (spellings kept for compatibility). */
  hidden?: boolean;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

type ValueOf<F extends FlagSpec> = F['type'] extends 'boolean'
  ? boolean
  : F['type'] extends 'int' | 'number' | 'size'
    ? number
    : F['type'] extends 'list'
      ? string[]
      : string;

/** Parsed values by flag name; a flag that was not given (and has no default) is undefined. */
export type FlagValues<S extends FlagSpecs> = { -readonly [K in keyof S]: ValueOf<S[K]> | undefined };

export interface ParsedFlags<S extends FlagSpecs> {
  values: FlagValues<S>;
  /** Names of the flags the command line gave (defaults excluded). */
  given: ReadonlySet<keyof S & string>;
  /** Arguments that are not flags, in order (only when the caller allows them). */
  positionals: string[];
}

export interface ParseOptions {
  /** How errors name the command, e.g. 'bench' (default: no prefix). */
  command?: string;
  /** Accept this many positional arguments (default 0). */
  maxPositionals?: number;
}

/** An INVALID_CONFIG error about one flag, in the house style `--flag=<value>: why`. */
export function flagError(flag: string, value: unknown, why: string, command?: string): MooncakeError {
  const shown = value === undefined ? '' : `=${describeValue(value)}`;
  const where = command === undefined ? '' : ` (see 'mooncake-node ${command} --help')`;
  return new MooncakeError('INVALID_CONFIG', `${flag}${shown}: ${why}${where}`, { details: { flag, value } });
}

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/**
 * A byte size: 4096, 64K, 1M, 1.5G, 64KiB, 64KB (K, M, G, T are powers of 1024, as in upstream's tools).
 * Throws INVALID_CONFIG naming `flag`.
 */
export function parseSize(text: string, flag: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?$/.exec(text.trim());
  const n = m === null ? NaN : Math.round(Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()]);
  if (!Number.isSafeInteger(n)) throw flagError(flag, text, 'expected a size like 4096, 64K, 1M or 2G');
  if (n < min || n > max) throw flagError(flag, text, `expected a size from ${min} to ${max} bytes`);
  return n;
}

function convert(name: string, spec: FlagSpec, text: string): string | number {
  const flag = `--${name}`;
  switch (spec.type) {
    case 'int': {
      if (!/^[-+]?\d+$/.test(text.trim())) throw flagError(flag, text, 'expected an integer');
      const n = Number(text);
      const min = spec.min ?? Number.MIN_SAFE_INTEGER;
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      if (!Number.isSafeInteger(n) || n < min || n > max) {
        throw flagError(flag, n, `expected ${integerRange(min, max)}`);
      }
      return n;
    }
    case 'number': {
      const n = text.trim() === '' ? NaN : Number(text);
      if (!Number.isFinite(n)) throw flagError(flag, text, 'expected a number');
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
        throw flagError(flag, n, `expected a number from ${spec.min ?? '-inf'} to ${spec.max ?? 'inf'}`);
      }
      return n;
    }
    case 'size':
      return parseSize(text, flag, spec.min ?? 1, spec.max ?? Number.MAX_SAFE_INTEGER);
    default:
      if (spec.choices !== undefined && !spec.choices.includes(text)) {
        throw flagError(flag, text, `expected one of ${spec.choices.join(', ')}`);
      }
      return text;
  }
}

function parseBoolean(name: string, text: string): boolean {
  if (text === 'true') return true;
  if (text === 'false') return false;
  throw flagError(`--${name}`, text, 'a switch: give it alone, or =true / =false');
}

/** Levenshtein distance, for "did you mean" (names are short). */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length];
}

interface Lookup {
  name: string;
  spec: FlagSpec;
  /** `--no-name` was used. */
  negated: boolean;
}

function buildIndex(specs: FlagSpecs): Map<string, Lookup> {
  const index = new Map<string, Lookup>();
  const add = (key: string, entry: Lookup): void => {
    index.set(key, entry);
    index.set(key.replace(/-/g, '_'), entry);
  };
  for (const [name, spec] of Object.entries(specs)) {
    add(name, { name, spec, negated: false });
    for (const a of spec.aliases ?? []) add(a, { name, spec, negated: false });
    if (spec.short !== undefined) index.set(spec.short, { name, spec, negated: false });
    if (spec.type === 'boolean' && spec.negatable === true) {
      add(`no-${name}`, { name, spec, negated: true });
      index.set(`no${name.replace(/-/g, '_')}`, { name, spec, negated: true }); // gflags' --noflag
    }
  }
  return index;
}

function suggestion(token: string, specs: FlagSpecs): string {
  const wanted = token.replace(/^-+/, '').split('=')[0].replace(/_/g, '-');
  let best: string | undefined;
  let bestScore = Infinity;
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.hidden === true) continue;
    for (const candidate of [name, ...(spec.aliases ?? [])]) {
      const d = distance(wanted, candidate.replace(/_/g, '-'));
      if (d < bestScore) {
        bestScore = d;
        best = name;
      }
    }
  }
  return best !== undefined && bestScore <= Math.max(2, Math.floor(wanted.length / 3)) ? `; did you mean --${best}?` : '';
}

/** True for a token that starts a flag (a negative number is a value, `-` alone is a value). */
function looksLikeFlag(token: string): boolean {
  return token.startsWith('-') && token !== '-' && !/^-\d/.test(token);
}

/** Parses `argv` against `specs`. Throws INVALID_CONFIG for any mistake, naming the flag. */
export function parseFlags<S extends FlagSpecs>(specs: S, argv: readonly string[], options: ParseOptions = {}): ParsedFlags<S> {
  const index = buildIndex(specs);
  const values: Record<string, unknown> = {};
  const given = new Set<string>();
  const positionals: string[] = [];
  const command = options.command;
  let i = 0;
  while (i < argv.length) {
    const token = argv[i++];
    if (token === '--') {
      positionals.push(...argv.slice(i));
      break;
    }
    if (!looksLikeFlag(token)) {
      positionals.push(token);
      continue;
    }
    const body = token.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const key = eq === -1 ? body : body.slice(0, eq);
    const inline = eq === -1 ? undefined : body.slice(eq + 1);
    // A single dash takes a one-letter flag, or a whole name as gflags does (-block_size=4096).
    const hit = token.startsWith('--') && key.length === 1 ? undefined : index.get(key);
    if (hit === undefined) {
      throw new MooncakeError('INVALID_CONFIG', `${token.split('=')[0]}: unknown option${command ? ` for '${command}'` : ''}${suggestion(token, specs)}${command ? ` (see 'mooncake-node ${command} --help')` : ''}`, {
        details: { flag: token },
      });
    }
    const { name, spec, negated } = hit;
    const flag = `--${name}`;
    if (given.has(name)) throw flagError(flag, undefined, 'given more than once', command);
    given.add(name);
    if (spec.type === 'boolean') {
      if (negated && inline !== undefined) throw flagError(`--no-${name}`, inline, 'takes no value', command);
      values[name] = negated ? false : inline === undefined ? true : parseBoolean(name, inline);
      continue;
    }
    const texts: string[] = [];
    if (inline !== undefined) texts.push(inline);
    else {
      while (i < argv.length && !looksLikeFlag(argv[i])) {
        texts.push(argv[i++]);
        if (spec.type !== 'list') break;
      }
    }
    if (texts.length === 0) throw flagError(flag, undefined, `needs a value${spec.arg ? ` (${spec.arg})` : ''}`, command);
    if (spec.type === 'list') {
      const list = inline !== undefined ? inline.split(',').filter((s) => s !== '') : texts;
      if (list.length === 0) throw flagError(flag, inline, 'needs at least one value', command);
      values[name] = list.map((t) => convert(name, spec, t));
    } else {
      values[name] = convert(name, spec, texts[0]);
    }
  }
  const max = options.maxPositionals ?? 0;
  if (positionals.length > max) {
    throw new MooncakeError('INVALID_CONFIG', `${describeValue(positionals[max])}: unexpected argument${command ? ` for '${command}'` : ''} (flags start with --)`, {
      details: { value: positionals[max] },
    });
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (values[name] === undefined && spec.default !== undefined) values[name] = Array.isArray(spec.default) ? [...spec.default] : spec.default;
  }
  return { values: values as FlagValues<S>, given: given as Set<keyof S & string>, positionals };
}

function placeholder(spec: FlagSpec): string {
  if (spec.type === 'boolean') return '';
  const arg = spec.arg ?? (spec.choices !== undefined ? spec.choices.join('|') : spec.type === 'size' ? 'SIZE' : spec.type === 'int' ? 'N' : spec.type === 'number' ? 'X' : 'VALUE');
  return spec.type === 'list' ? ` ${arg} [${arg} ...]` : ` ${arg}`;
}

function defaultOf(spec: FlagSpec): string | undefined {
  if (spec.defaultText !== undefined) return spec.defaultText;
  const d = spec.default;
  if (d === undefined || d === false || (spec.type === 'boolean' && spec.negatable === true)) return undefined;
  return Array.isArray(d) ? d.join(' ') : String(d);
}

/** The options block of a help text: one aligned line (or more, wrapped) per visible flag. */
export function formatFlags(specs: FlagSpecs): string {
  const rows: [string, string][] = [];
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.hidden === true) continue;
    const shown = spec.type === 'boolean' && spec.negatable === true ? `no-${name}` : name;
    const names = [spec.short !== undefined ? `-${spec.short}, ` : '', `--${shown}`, ...(spec.aliases ?? []).filter((a) => !a.includes('_')).map((a) => ` | --${a}`)].join('');
    const d = defaultOf(spec);
    rows.push([`${names}${placeholder(spec)}`, `${spec.help}${d !== undefined ? ` (default ${d})` : ''}`]);
  }
  const width = Math.min(34, Math.max(...rows.map(([l]) => l.length)));
  const indent = ' '.repeat(width + 4);
  return rows
    .map(([left, right]) => {
      const text = wrap(right, 104 - indent.length).join(`\n${indent}`);
      return left.length > width ? `  ${left}\n${indent}${text}` : `  ${left.padEnd(width)}  ${text}`;
    })
    .join('\n');
}

/** Splits text into lines of at most `width` characters, at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  if (line !== '') lines.push(line);
  return lines;
}
