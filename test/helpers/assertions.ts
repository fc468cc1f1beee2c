/** Assertions and names shared by the end-to-end tests. */
import type { Test } from 'tap';

let seq = 0;
/** A unique name per call (event names, customers), so subtests never interfere. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${(seq++).toString(36)}`;
}

/** A syntactically valid secret key of the given mode. */
export function randomKey(prefix: 'sk_test_' | 'sk_live_'): string {
  let s = '';
  while (s.length < 24) s += Math.random().toString(36).slice(2);
  return prefix + s.slice(0, 24);
}

export interface ExpectedError {
  type?: string;
  statusCode?: number;
  code?: string;
  param?: string | RegExp;
  rawType?: string;
  [k: string]: unknown;
}

/** Awaits `p`, requires it to fail, and checks the stripe error's properties (strings, numbers or patterns). */
export async function expectError(t: Test, p: Promise<unknown>, want: ExpectedError, what: string): Promise<any> {
  let err: any;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  if (!err) {
    t.fail(`${what}: expected a ${want.type ?? 'Stripe'} error, but the request succeeded`);
    return undefined;
  }
  for (const [k, v] of Object.entries(want)) {
    if (v instanceof RegExp) t.match(String(err[k]), v, `${what}: ${k} matches ${v} (message: ${err.message})`);
    else t.equal(err[k], v, `${what}: ${k} = ${v} (message: ${err.message})`);
  }
  return err;
}

/** Like expectError, and the error must be an instance of `ctor` (a stripe error class). */
export async function expectStripeError(
  t: Test,
  p: Promise<unknown>,
  ctor: abstract new (...args: any[]) => Error,
  props: Record<string, unknown>,
  label: string,
): Promise<any> {
  let err: any = null;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof ctor, `${label}: ${ctor.name} (got ${err?.constructor?.name}: ${err?.message})`);
  for (const [k, v] of Object.entries(props)) t.equal(err?.[k], v, `${label}: ${k}`);
  return err;
}
