import type { BenchOptions } from './options';

export async function runCompare(o: BenchOptions, log: (s: string) => void): Promise<void> {
  throw new Error('compare: not yet wired');
}
