#!/usr/bin/env node
/**
 * `npx mooncake-node <command>`: bench (the default job), metadata-server, proxy, proxy-bench, doctor.
 */
import { MooncakeError } from './errors';

const USAGE = `Usage: mooncake-node <command> [options]

Commands:
  bench             KV transfer benchmark (default: --mode loopback, no set-up needed)
  metadata-server   upstream-compatible HTTP metadata server
  proxy             OpenAI-compatible PD proxy (prefill then decode)
  proxy-bench       latency the proxy adds, on loopback
  doctor            checks the mooncake backend on an Ascend host (wheel, CANN, NPUs, ascend loopback)
  help              this text

Run 'mooncake-node <command> --help' for a command's options.`;

async function main(argv: string[]): Promise<void> {
  const [command = 'help', ...rest] = argv;
  switch (command) {
    case 'bench': {
      const { runBenchCommand } = await import('./bench/cli');
      return runBenchCommand(rest);
    }
    case 'metadata-server': {
      const { runMetadataServerCommand } = await import('./metadata/server-cli');
      return runMetadataServerCommand(rest);
    }
    case 'proxy': {
      const { runProxyCommand } = await import('./proxy/cli');
      return runProxyCommand(rest);
    }
    case 'proxy-bench': {
      const { runProxyBenchCommand } = await import('./proxy/bench');
      return runProxyBenchCommand(rest);
    }
    case 'doctor': {
      const { runDoctorCommand } = await import('./doctor');
      return runDoctorCommand(rest);
    }
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return;
    default:
      throw new MooncakeError('INVALID_CONFIG', `unknown command '${command}'\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const e = err as { code?: string; message?: string };
  console.error(`mooncake-node: ${e.code ? `[${e.code}] ` : ''}${e.message ?? String(err)}`);
  process.exitCode = 1;
});
