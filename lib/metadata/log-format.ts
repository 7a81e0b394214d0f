/**
 * The on-disk format of the metadata server's log (lib/metadata/persistence.ts): JSON lines, a header
 * then one record per change, and the reader for it and for the whole-store file of version 1.
 */
import * as fs from 'node:fs';

export const DATA_FILE = 'metadata.json';
const LOG_FORMAT = 'mooncake-node-metadata-log';
const LEGACY_FORMAT = 'mooncake-node-metadata';
export const HEADER = Buffer.from(JSON.stringify({ format: LOG_FORMAT, version: 2 }) + '\n');
const LEGACY_PREFIX = Buffer.from(`{"format":"${LEGACY_FORMAT}",`);
export const READ_CHUNK = 4 * 1024 * 1024;

export interface LoggedEntry {
  value: Buffer;
  /** Wall-clock ms of the last PUT (or touch). */
  updatedAt: number;
}

export type LogRecord = { op: 'put'; key: string; value: Buffer; updatedAt: number } | { op: 'touch'; key: string; updatedAt: number } | { op: 'del'; key: string };

/** One record as it goes on disk. */
export function encodeRecord(r: LogRecord): Buffer {
  if (r.op === 'put') {
    const text = r.value.toString('utf8');
    const json = JSON.stringify(text);
    // UTF-8 text when it round-trips and escaping does not blow it up (bytes like 0x01 take 6 chars).
    const utf8 = json.length <= r.value.length * 1.25 + 16 && Buffer.byteLength(text, 'utf8') === r.value.length && Buffer.from(text, 'utf8').equals(r.value);
    const value = utf8 ? json : JSON.stringify(r.value.toString('base64'));
    return Buffer.from(`{"op":"put","key":${JSON.stringify(r.key)},"value":${value},"encoding":"${utf8 ? 'utf8' : 'base64'}","updatedAt":${r.updatedAt}}\n`);
  }
  if (r.op === 'touch') return Buffer.from(`{"op":"touch","key":${JSON.stringify(r.key)},"updatedAt":${r.updatedAt}}\n`);
  return Buffer.from(`{"op":"del","key":${JSON.stringify(r.key)}}\n`);
}

function decodeRecord(line: string): LogRecord | undefined {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (o === null || typeof o !== 'object' || typeof o.key !== 'string') return undefined;
  if (o.op === 'del') return { op: 'del', key: o.key };
  if (typeof o.updatedAt !== 'number' || !Number.isFinite(o.updatedAt)) return undefined;
  if (o.op === 'touch') return { op: 'touch', key: o.key, updatedAt: o.updatedAt };
  if (o.op !== 'put' || typeof o.value !== 'string' || (o.encoding !== 'utf8' && o.encoding !== 'base64')) return undefined;
  return { op: 'put', key: o.key, value: Buffer.from(o.value, o.encoding), updatedAt: o.updatedAt };
}

export function applyRecord(entries: Map<string, LoggedEntry>, r: LogRecord): void {
  if (r.op === 'put') {
    entries.delete(r.key); // keeps PUT order, as the live map does
    entries.set(r.key, { value: r.value, updatedAt: r.updatedAt });
  } else if (r.op === 'touch') {
    const e = entries.get(r.key);
    if (e) e.updatedAt = r.updatedAt;
  } else {
    entries.delete(r.key);
  }
}

/** The file is not a log of ours (nor a version-1 file): it is moved aside. */
export class Unreadable extends Error {}
/** The file exists but is empty: a new log. */
export class EmptyLog extends Error {}

/**
 * Reads the log at `file` into `entries`: `cut` is where a torn last record starts (to truncate to),
 * `legacy` says it was a version-1 file. Throws ENOENT, or Unreadable when the file is not ours.
 */
export async function readLog(file: string, entries: Map<string, LoggedEntry>): Promise<{ skipped: number; legacy: boolean; cut: number | undefined }> {
  const h = await fs.promises.open(file, 'r');
  try {
    const size = (await h.stat()).size;
    if (size === 0) throw new EmptyLog(); // created, but the process stopped before writing it
    const buf = Buffer.allocUnsafe(Math.min(size, READ_CHUNK));
    let pos = 0; // file offset of carry[0]
    let carry: Buffer = Buffer.alloc(0);
    let first = true;
    let skipped = 0;
    let lastGood = 0; // end of the last whole, valid-or-skipped record
    for (let off = 0; off < size; ) {
      const { bytesRead } = await h.read(buf, 0, buf.length, off);
      if (bytesRead === 0) break;
      off += bytesRead;
      const data = carry.length ? Buffer.concat([carry, buf.subarray(0, bytesRead)]) : Buffer.from(buf.subarray(0, bytesRead));
      // The whole-store file of version 1 is one (possibly huge) JSON document: read it in one go.
      if (first && data.subarray(0, LEGACY_PREFIX.length).equals(LEGACY_PREFIX)) return { ...(await readLegacy(file, entries)), legacy: true, cut: undefined };
      let start = 0;
      for (let nl = data.indexOf(10, start); nl >= 0; nl = data.indexOf(10, start)) {
        const line = data.toString('utf8', start, nl);
        if (first) {
          first = false;
          const head = parseHeader(line);
          if (head === 'legacy') return { ...(await readLegacy(file, entries)), legacy: true, cut: undefined };
        } else {
          const r = decodeRecord(line);
          if (r) applyRecord(entries, r);
          else skipped++;
        }
        start = nl + 1;
        lastGood = pos + start;
      }
      carry = data.subarray(start);
      pos += start;
    }
    if (first) {
      // No newline at all: a legacy file (one JSON document), or a torn header.
      const head = parseHeader(carry.toString('utf8'));
      if (head === 'legacy') return { ...(await readLegacy(file, entries)), legacy: true, cut: undefined };
      throw new Unreadable('the header is incomplete');
    }
    // A record without its newline is one the previous run did not finish writing.
    return { skipped, legacy: false, cut: carry.length > 0 ? lastGood : undefined };
  } finally {
    await h.close();
  }
}

/** 'log' for our header, 'legacy' for a version-1 whole-store file; throws Unreadable otherwise. */
function parseHeader(line: string): 'log' | 'legacy' {
  let o: { format?: unknown; version?: unknown } | null;
  try {
    o = JSON.parse(line) as typeof o;
  } catch {
    if (line.startsWith(`{"format":"${LEGACY_FORMAT}"`)) throw new Unreadable('the file is cut short');
    throw new Unreadable(`not a ${LEGACY_FORMAT} file`);
  }
  if (o === null || typeof o !== 'object') throw new Unreadable(`not a ${LEGACY_FORMAT} file`);
  if (o.format === LOG_FORMAT) {
    if (o.version !== 2) throw new Unreadable(`unsupported version ${String(o.version)}`);
    return 'log';
  }
  if (o.format === LEGACY_FORMAT) return 'legacy';
  throw new Unreadable(`not a ${LEGACY_FORMAT} file`);
}

interface LegacyEntry {
  key?: unknown;
  value?: unknown;
  encoding?: unknown;
  updatedAt?: unknown;
}

/** The version-1 format: one JSON document holding every entry. */
async function readLegacy(file: string, entries: Map<string, LoggedEntry>): Promise<{ skipped: number }> {
  const text = await fs.promises.readFile(file, 'utf8');
  let doc: { format?: unknown; version?: unknown; entries?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch {
    throw new Unreadable('the file is cut short');
  }
  if (doc === null || typeof doc !== 'object' || doc.format !== LEGACY_FORMAT || !Array.isArray(doc.entries)) throw new Unreadable(`not a ${LEGACY_FORMAT} file`);
  if (doc.version !== 1) throw new Unreadable(`unsupported version ${String(doc.version)}`);
  let skipped = 0;
  for (const e of doc.entries as (LegacyEntry | null)[]) {
    if (e === null || typeof e !== 'object' || typeof e.key !== 'string' || typeof e.value !== 'string' || (e.encoding !== 'utf8' && e.encoding !== 'base64') || typeof e.updatedAt !== 'number') {
      skipped++;
      continue;
    }
    applyRecord(entries, { op: 'put', key: e.key, value: Buffer.from(e.value, e.encoding), updatedAt: e.updatedAt });
  }
  return { skipped };
}
