import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native addons are only safe in forked workers (vitest's threads pool may crash on them).
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The machine has 2 cores: keep parallel suites low so timing-sensitive tests stay honest.
    maxWorkers: 2,
  },
});
