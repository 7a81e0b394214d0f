#!/usr/bin/env node
/**
 * `npx mooncake-node <command>`: the program. Commands are listed in lib/cli/commands.ts; parsing, help,
 * `--version`, signals and the one-line error style live in lib/cli/.
 */
import { CommandRegistry } from './cli/command';
import { COMMANDS } from './cli/commands';

void new CommandRegistry(COMMANDS).run(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
