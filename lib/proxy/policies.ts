/**
 * Load-balancing policies. A policy only chooses among the candidates it is given; the instance pool decides
 * which instances are candidates (healthy first, never one already tried for this request when another exists).
 */
import { MooncakeError } from '../errors';
import type { PolicyName } from './options';

/** What a policy may look at. */
export interface LoadView {
  /** Requests currently sent to the instance and not finished. */
  readonly inFlight: number;
  /** Estimated tokens of those requests. */
  readonly inFlightTokens: number;
}

export interface Policy {
  readonly name: PolicyName;
  /** Chooses one of `candidates`, or undefined when there are none. */
  pick<T extends LoadView>(candidates: readonly T[]): T | undefined;
}

/** Cycles through the candidates in order. */
export class RoundRobinPolicy implements Policy {
  readonly name = 'round-robin' as const;
  private next = 0;

  pick<T extends LoadView>(candidates: readonly T[]): T | undefined {
    if (candidates.length === 0) return undefined;
    const chosen = candidates[this.next % candidates.length];
    this.next = (this.next + 1) % 1_000_000_007;
    return chosen;
  }
}

/**
 * Picks the candidate with the lowest load. Ties are broken by a rotating start so equally loaded instances
 * share the traffic instead of the first one taking it all.
 */
export class LeastLoadPolicy implements Policy {
  private rotation = 0;

  constructor(readonly name: 'least-requests' | 'least-tokens') {}

  pick<T extends LoadView>(candidates: readonly T[]): T | undefined {
    const n = candidates.length;
    if (n === 0) return undefined;
    const start = this.rotation % n;
    this.rotation = (this.rotation + 1) % 1_000_000_007;
    let best: T | undefined;
    for (let k = 0; k < n; k++) {
      const c = candidates[(start + k) % n];
      if (best === undefined || this.less(c, best)) best = c;
    }
    return best;
  }

  private less(a: LoadView, b: LoadView): boolean {
    if (this.name === 'least-tokens') {
      if (a.inFlightTokens !== b.inFlightTokens) return a.inFlightTokens < b.inFlightTokens;
      return a.inFlight < b.inFlight;
    }
    if (a.inFlight !== b.inFlight) return a.inFlight < b.inFlight;
    return a.inFlightTokens < b.inFlightTokens;
  }
}

export function createPolicy(name: PolicyName): Policy {
  switch (name) {
    case 'round-robin':
      return new RoundRobinPolicy();
    case 'least-requests':
    case 'least-tokens':
      return new LeastLoadPolicy(name);
    default:
      throw new MooncakeError('INVALID_CONFIG', `policy=${JSON.stringify(name)}: expected round-robin, least-requests or least-tokens`);
  }
}
