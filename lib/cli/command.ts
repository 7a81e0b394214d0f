/**
 * Subcommands of `mooncake-node`: what one is (flags as data, a run function), how they are found (a
 * registry of lazily loaded entries, nested for `bench kv`-style subcommands) and how the program runs
 * them: `--help` on every command, `--version`, signals turned into an AbortSignal, and every failure
 * reported as one coded line on stderr with a non-zero exit code.
 *
 * Adding a command: write a module that exports a `Command` made with `defineCommand`, and list it in
 * lib/cli/commands.ts (or, for a subcommand, in the parent's `subcommands`). Nothing else changes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MooncakeError } from '../errors';
import { formatFlags, parseFlags, type FlagSpecs, type FlagValues } from './flags';

export interface CommandContext {
  /** Where results go. */
  stdout: NodeJS.WritableStream;
  /** Where progress and logs go. */
  stderr: NodeJS.WritableStream;
  env: Readonly<Record<string, string | undefined>>;
  /** Aborted on the first SIGINT/SIGTERM (for commands with `signals: 'abort'`), or by the caller. */
  signal: AbortSignal;
  /** Flags the command line gave explicitly (defaults excluded). */
  given: ReadonlySet<string>;
  /** Positional arguments (only for commands that declare `positionals`). */
  positionals: readonly string[];
}

export interface Command<S extends FlagSpecs = FlagSpecs> {
  /** The full name, e.g. 'bench' or 'bench kv'. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Paragraphs under the usage line of `--help`. */
  description?: string;
  flags: S;
  /** Positional arguments, e.g. `{ name: 'FILE', max: 1 }` (default none). */
  positionals?: { name: string; max: number };
  /** Examples shown at the end of `--help`. */
  examples?: readonly string[];
  /** Subcommands chosen by the first argument (`mooncake-node bench kv ...`). */
  subcommands?: readonly CommandEntry[];
  /**
   * 'abort' (default): the first SIGINT/SIGTERM aborts `ctx.signal` and the run must end soon after; a second
   * one exits at once. 'own': the command installs its own handlers (servers that drain on a signal).
   */
  signals?: 'abort' | 'own';
  /** Runs the command; a rejection is reported as one coded line. */
  run(flags: FlagValues<S>, ctx: CommandContext): Promise<void>;
}

/** Gives a command literal its flag types. */
export function defineCommand<S extends FlagSpecs>(command: Command<S>): Command<S> {
  return command;
}

/** A registry entry: the name and summary are known without loading the command's module. */
export interface CommandEntry {
  name: string;
  summary: string;
  load(): Promise<Command<FlagSpecs>> | Command<FlagSpecs>;
}

const HELP_FLAG = { help: { type: 'boolean', short: 'h', help: 'show this text' } } as const;

/** The `--help` text of a command. */
export function commandHelp(command: Command<FlagSpecs>): string {
  const sub = command.subcommands !== undefined && command.subcommands.length > 0 ? ' [<subcommand>]' : '';
  const pos = command.positionals !== undefined ? ` [${command.positionals.name}]` : '';
  const parts = [`Usage: mooncake-node ${command.name}${sub} [options]${pos}`, '', command.description ?? command.summary];
  if (sub !== '') parts.push('', 'Subcommands:', listEntries(command.subcommands ?? []));
  parts.push('', 'Options:', formatFlags({ ...command.flags, ...HELP_FLAG }));
  if (command.examples !== undefined && command.examples.length > 0) parts.push('', 'Examples:', ...command.examples.map((e) => `  ${e}`));
  return parts.join('\n') + '\n';
}

function listEntries(entries: readonly CommandEntry[]): string {
  const width = Math.max(...entries.map((e) => e.name.split(' ').pop()!.length));
  return entries.map((e) => `  ${e.name.split(' ').pop()!.padEnd(width)}  ${e.summary}`).join('\n');
}

/** The package version (from package.json next to dist/ or lib/). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export interface RunCliOptions {
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
  env?: Readonly<Record<string, string | undefined>>;
  /** Install SIGINT/SIGTERM handlers for commands with `signals: 'abort'` (default true). */
  handleSignals?: boolean;
  /** Aborts the running command like a signal does. */
  signal?: AbortSignal;
}

/** Turns any failure into the one line the CLI prints (messages on several lines are joined). */
export function errorLine(err: unknown): string {
  const e = err instanceof MooncakeError ? err : new MooncakeError('INTERNAL', err instanceof Error ? err.message : String(err), { cause: err });
  const lines = e.message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const message = lines.reduce((acc, l) => (acc === '' ? l : /[.,:;]$/.test(acc) ? `${acc} ${l}` : `${acc}; ${l}`), '');
  return `mooncake-node: [${e.code}] ${message}`;
}

export class CommandRegistry {
  private readonly entries: CommandEntry[] = [];

  constructor(entries: readonly CommandEntry[] = []) {
    for (const e of entries) this.register(e);
  }

  /** Adds a command. Throws INVALID_CONFIG when the name is taken. */
  register(entry: CommandEntry): this {
    if (this.entries.some((e) => e.name === entry.name)) throw new MooncakeError('INVALID_CONFIG', `command '${entry.name}' is registered twice`);
    this.entries.push(entry);
    return this;
  }

  list(): readonly CommandEntry[] {
    return this.entries;
  }

  usage(): string {
    return [
      'Usage: mooncake-node <command> [options]',
      '',
      'Commands:',
      listEntries([...this.entries, { name: 'help', summary: 'this text (help <command>: its options)', load: () => undefined as never }]),
      '',
      "Run 'mooncake-node <command> --help' for a command's options; 'mooncake-node --version' for the version.",
      '',
    ].join('\n');
  }

  /**
   * Runs the command line (without the node and script arguments). Resolves with the exit code: 0, 1 after a
   * failure (one coded line on stderr), 130/143 when SIGINT/SIGTERM interrupted the command.
   */
  async run(argv: readonly string[], options: RunCliOptions = {}): Promise<number> {
    const stdout = options.stdout ?? process.stdout;
    const stderr = options.stderr ?? process.stderr;
    try {
      await this.dispatch(argv, { ...options, stdout, stderr });
      return 0;
    } catch (err) {
      stderr.write(errorLine(err) + '\n');
      // Interrupted by a signal: the shell's convention, 128 + the signal number.
      const sig = err instanceof MooncakeError && err.code === 'ABORT_ERR' ? err.details?.signal : undefined;
      return sig === 'SIGINT' ? 130 : sig === 'SIGTERM' ? 143 : 1;
    }
  }

  private async dispatch(argv: readonly string[], o: RunCliOptions & { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream }): Promise<void> {
    const [first, ...rest] = argv;
    if (first === undefined || first === 'help' || first === '--help' || first === '-h') {
      if (first === 'help' && rest.length > 0) return this.dispatch([...rest, '--help'], o);
      o.stdout.write(this.usage());
      return;
    }
    if (first === '--version' || first === '-v' || first === 'version') {
      o.stdout.write(`mooncake-node ${packageVersion()}\n`);
      return;
    }
    let entries: readonly CommandEntry[] = this.entries;
    let entry = entries.find((e) => e.name === first);
    if (entry === undefined) {
      const names = entries.map((e) => e.name).join(', ');
      throw new MooncakeError('INVALID_CONFIG', `${JSON.stringify(first)}: unknown command (commands: ${names}; see 'mooncake-node help')`, { details: { command: first } });
    }
    let command = await entry.load();
    let args = rest;
    // Subcommands: `bench kv ...` picks the entry named 'bench kv'.
    while (command.subcommands !== undefined && args.length > 0 && !args[0].startsWith('-')) {
      entries = command.subcommands;
      const full = `${command.name} ${args[0]}`;
      entry = entries.find((e) => e.name === full);
      if (entry === undefined) break;
      command = await entry.load();
      args = args.slice(1);
    }
    const parsed = parseFlags({ ...command.flags, ...HELP_FLAG }, args, { command: command.name, maxPositionals: command.positionals?.max ?? 0 });
    if (parsed.values.help === true) {
      o.stdout.write(commandHelp(command));
      return;
    }
    const { help: _help, ...values } = parsed.values;
    await this.runWithSignals(command, values as FlagValues<FlagSpecs>, parsed.given, parsed.positionals, o);
  }

  private async runWithSignals(
    command: Command<FlagSpecs>,
    values: FlagValues<FlagSpecs>,
    given: ReadonlySet<string>,
    positionals: readonly string[],
    o: RunCliOptions & { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream },
  ): Promise<void> {
    const ctrl = new AbortController();
    const onAbort = (): void => ctrl.abort(o.signal?.reason);
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (o.signal?.aborted === true) onAbort();
    const handle = (o.handleSignals ?? true) && (command.signals ?? 'abort') === 'abort';
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      signals++;
      if (signals === 1) {
        ctrl.abort(new MooncakeError('ABORT_ERR', `interrupted by ${sig}`, { details: { signal: sig } }));
        return;
      }
      o.stderr.write(`mooncake-node: [ABORT_ERR] ${sig} again: exiting without cleaning up\n`);
      process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
    };
    if (handle) {
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
    }
    try {
      await command.run(values, { stdout: o.stdout, stderr: o.stderr, env: o.env ?? process.env, signal: ctrl.signal, given, positionals });
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      if (handle) {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    }
  }
}
