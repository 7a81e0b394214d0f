/**
 * The subcommands `mooncake-node` knows, in the order `help` lists them. Each module is loaded only when
 * its command runs (the bench does not load the proxy, the metadata server does not load the addon).
 *
 * To add one: export a `Command` from its module (see lib/cli/command.ts) and add an entry here; a
 * subcommand (`bench kv`) goes in its parent's `subcommands` instead.
 */
import type { CommandEntry } from './command';

export const COMMANDS: readonly CommandEntry[] = [
  { name: 'bench', summary: 'KV transfer benchmark (loopback by default: no set-up needed)', load: async () => (await import('../bench/cli')).benchCommand },
  { name: 'metadata-server', summary: 'upstream-compatible HTTP metadata server', load: async () => (await import('../metadata/command')).metadataServerCommand },
  { name: 'proxy', summary: 'OpenAI-compatible PD proxy (prefill, then decode)', load: async () => (await import('../proxy/cli')).proxyCommand },
  { name: 'proxy-bench', summary: 'latency the proxy adds, on loopback', load: async () => (await import('../proxy/bench-command')).proxyBenchCommand },
  { name: 'doctor', summary: 'checks the mooncake backend on an Ascend host (wheel, CANN, NPUs, ascend loopback)', load: async () => (await import('../tools/doctor')).doctorCommand },
  { name: 'setup-upstream', summary: "install upstream Mooncake's pinned wheel for bench --compare and the interop tests", load: async () => (await import('../tools/setup-upstream')).setupUpstreamCommand },
];
