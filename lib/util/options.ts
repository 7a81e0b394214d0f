/**
 * Option values, one rule each: integers from options and flags, integers from the environment (as
 * upstream reads its MC_* variables), and the message a bad one gets.
 */
import { MooncakeError, describeValue, type ErrorCode } from '../errors';

/** A bad option: `name=value: why` (INVALID_CONFIG unless told), naming the option and value in details. */
export function optionError(name: string, value: unknown, why: string, code: ErrorCode = 'INVALID_CONFIG'): MooncakeError {
  return new MooncakeError(code, `${name}=${describeValue(value)}: ${why}`, { details: { option: name, value } });
}

/** What an integer in [min, max] is called in messages. */
export function integerRange(min: number, max: number): string {
  if (max === Number.MAX_SAFE_INTEGER) return min === Number.MIN_SAFE_INTEGER ? 'a safe integer' : `an integer of at least ${min}`;
  return `an integer from ${min} to ${max}`;
}

/** An integer option in [min, max] (default: at least 1); undefined when not given. Throws optionError. */
export function intOption(name: string, value: unknown, min = 1, max = Number.MAX_SAFE_INTEGER, code: ErrorCode = 'INVALID_CONFIG'): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) throw optionError(name, value, `expected ${integerRange(min, max)}`, code);
  return value;
}

/**
 * An integer from the environment, read as upstream reads its MC_* variables (a leading decimal
 * integer, like std::stoi); undefined when unset or when it does not start with one.
 */
export function envInt(name: string, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const m = /^\s*([+-]?\d+)/.exec(env[name] ?? '');
  return m ? Number(m[1]) : undefined;
}
