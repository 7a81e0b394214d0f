/** Parses Prometheus text (0.0.4) into `name{labels}` → value, and checks its shape line by line. */
export function parseText(text: string): Map<string, number> {
  const out = new Map<string, number>();
  const typed = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const t = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line);
    if (t) {
      if (typed.has(t[1])) throw new Error(`family ${t[1]} declared twice`);
      typed.add(t[1]);
      continue;
    }
    if (/^# HELP \S+ .+$/.test(line)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const key = m[1] + (m[2] ?? '');
    if (out.has(key)) throw new Error(`series ${key} written twice`);
    out.set(key, m[3] === '+Inf' ? Infinity : Number(m[3]));
  }
  return out;
}

/** The value of a series whose labels include `labels` (exactly one must match). */
export function value(series: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const matches = [...series].filter(([k]) => {
    if (k !== name && !k.startsWith(`${name}{`)) return false;
    return Object.entries(labels).every(([l, v]) => k.includes(`${l}="${v}"`));
  });
  if (matches.length !== 1) throw new Error(`${matches.length} series match ${name} ${JSON.stringify(labels)}:\n${matches.map(([k]) => k).join('\n')}`);
  return matches[0][1];
}

export function names(series: Map<string, number>, prefix: string): string[] {
  return [...series.keys()].filter((k) => k.startsWith(prefix));
}
