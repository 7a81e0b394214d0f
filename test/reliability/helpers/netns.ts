/**
 * Network namespaces joined by a veth pair, made (and always removed) by the test: one engine per
 * namespace (`ip netns exec`), links cut with `ip link set down` and slowed with tc (netem when the
 * kernel has it, else a tbf rate limit).
 */
import { execFileSync } from 'node:child_process';

export function sh(cmd: string[], opts: { ignoreErrors?: boolean } = {}): string {
  try {
    return execFileSync(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  } catch (e) {
    if (opts.ignoreErrors) return '';
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`${cmd.join(' ')} failed: ${err.stderr?.toString().trim() || err.message}`);
  }
}

const PREFIX = 'mcrel';

/** Why namespaces cannot be used here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root (ip netns needs CAP_SYS_ADMIN)';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return "the 'ip' command (iproute2) is not installed";
  }
  try {
    execFileSync('tc', ['-V'], { stdio: 'ignore' });
  } catch {
    return "the 'tc' command (iproute2) is not installed";
  }
  const probe = `${PREFIX}-probe-${process.pid}`;
  try {
    sh(['ip', 'netns', 'add', probe]);
  } catch (e) {
    return `cannot create a network namespace: ${(e as Error).message}`;
  } finally {
    sh(['ip', 'netns', 'del', probe], { ignoreErrors: true });
  }
  return undefined;
}

/** Removes namespaces left behind by earlier runs whose process is gone. */
export function removeStale(): void {
  for (const line of sh(['ip', 'netns', 'list'], { ignoreErrors: true }).split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${PREFIX}-(\\d+)-`).exec(name);
    if (!m) continue;
    let alive = true;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      alive = false;
    }
    if (!alive) sh(['ip', 'netns', 'del', name], { ignoreErrors: true });
  }
}

export class VethPair {
  readonly nsA: string;
  readonly nsB: string;
  readonly devA: string;
  readonly devB: string;
  readonly ipA: string;
  readonly ipB: string;
  private made = false;

  constructor(tag: string) {
    const id = `${process.pid}-${tag}`;
    this.nsA = `${PREFIX}-${id}-a`;
    this.nsB = `${PREFIX}-${id}-b`;
    // Interface names are at most 15 characters; they live inside the namespaces, so no clash.
    this.devA = 'mcv-a';
    this.devB = 'mcv-b';
    const net = 100 + (process.pid % 150);
    this.ipA = `10.231.${net}.1`;
    this.ipB = `10.231.${net}.2`;
  }

  /** Both namespaces with loopback up, joined by a veth pair with a /24 between them. */
  create(): void {
    this.made = true;
    sh(['ip', 'netns', 'add', this.nsA]);
    sh(['ip', 'netns', 'add', this.nsB]);
    sh(['ip', '-n', this.nsA, 'link', 'add', this.devA, 'type', 'veth', 'peer', 'name', this.devB, 'netns', this.nsB]);
    sh(['ip', '-n', this.nsA, 'addr', 'add', `${this.ipA}/24`, 'dev', this.devA]);
    sh(['ip', '-n', this.nsB, 'addr', 'add', `${this.ipB}/24`, 'dev', this.devB]);
    for (const [ns, dev] of [[this.nsA, this.devA], [this.nsB, this.devB]] as const) {
      sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      sh(['ip', '-n', ns, 'link', 'set', dev, 'up']);
    }
  }

  /** The prefix that runs a command inside a namespace. */
  exec(ns: string): string[] {
    return ['ip', 'netns', 'exec', ns];
  }

  /** Cuts the link (both ends lose carrier; packets are dropped, nobody gets a RST). */
  cut(): void {
    sh(['ip', '-n', this.nsA, 'link', 'set', this.devA, 'down']);
  }

  restore(): void {
    sh(['ip', '-n', this.nsA, 'link', 'set', this.devA, 'up']);
    sh(['ip', '-n', this.nsB, 'link', 'set', this.devB, 'up']);
  }

  /**
   * Slows both directions: netem delay + rate when the kernel has sch_netem, else a tbf rate limit
   * only. Returns what was applied.
   */
  slow(rate = '10mbit', delay = '50ms'): string {
    const apply = (ns: string, dev: string): string => {
      sh(['tc', '-n', ns, 'qdisc', 'del', 'dev', dev, 'root'], { ignoreErrors: true });
      try {
        sh(['tc', '-n', ns, 'qdisc', 'add', 'dev', dev, 'root', 'netem', 'delay', delay, 'rate', rate]);
        return `netem delay ${delay} rate ${rate}`;
      } catch {
        sh(['tc', '-n', ns, 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '32kbit', 'latency', '400ms']);
        return `tbf rate ${rate} (no sch_netem in this kernel: no added delay)`;
      }
    };
    const a = apply(this.nsA, this.devA);
    apply(this.nsB, this.devB);
    return a;
  }

  /** 100% loss with netem, if the kernel has it; false otherwise. */
  blackhole(): boolean {
    try {
      sh(['tc', '-n', this.nsA, 'qdisc', 'del', 'dev', this.devA, 'root'], { ignoreErrors: true });
      sh(['tc', '-n', this.nsA, 'qdisc', 'add', 'dev', this.devA, 'root', 'netem', 'loss', '100%']);
      return true;
    } catch {
      return false;
    }
  }

  unshape(): void {
    sh(['tc', '-n', this.nsA, 'qdisc', 'del', 'dev', this.devA, 'root'], { ignoreErrors: true });
    sh(['tc', '-n', this.nsB, 'qdisc', 'del', 'dev', this.devB, 'root'], { ignoreErrors: true });
  }

  /** Deleting the namespaces removes the veth pair with them. Never throws. */
  destroy(): void {
    if (!this.made) return;
    sh(['ip', 'netns', 'del', this.nsA], { ignoreErrors: true });
    sh(['ip', 'netns', 'del', this.nsB], { ignoreErrors: true });
  }

  /** Whether anything of this pair is still there (for the cleanup check). */
  leftovers(): string[] {
    const list = sh(['ip', 'netns', 'list'], { ignoreErrors: true });
    return [this.nsA, this.nsB].filter((n) => list.includes(n));
  }
}
