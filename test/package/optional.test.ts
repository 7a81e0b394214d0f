import { describe, expect, it } from 'vitest';
import { MooncakeError } from '../../lib/errors';
import { requireOptional } from '../../lib/util/optional';

describe('requireOptional', () => {
  it('loads an installed package', () => {
    const ts = requireOptional<{ version: string }>('typescript', 'the type checker');
    expect(typeof ts.version).toBe('string');
  });

  it('says what to install when the package is missing', () => {
    let caught: unknown;
    try {
      requireOptional('mooncake-node-no-such-package', 'the test mode');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(MooncakeError);
    const err = caught as MooncakeError;
    expect(err.code).toBe('MISSING_DEPENDENCY');
    expect(err.message).toContain('npm install mooncake-node-no-such-package');
    expect(err.message).toContain('the test mode');
    expect(err.details).toEqual({ package: 'mooncake-node-no-such-package', feature: 'the test mode' });
  });
});
