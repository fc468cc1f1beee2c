/**
 * Stripe's `previous_attributes` of an `*.updated` event: the old values of what changed. Shared by the outbox, which
 * records them in the newest shape, and the version chain, which renders them in an event's older version.
 */
export function isPlain(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Stripe's `previous_attributes`: the old values of what changed. Hashes (metadata, address, …) are compared key by
 * key and only their changed keys appear, a key that did not exist before as null. Only the top-level keys present in
 * `before` are considered, so callers may pass either the whole previous object or just the changed attributes.
 */
export function previousAttributes(before: Record<string, unknown>, after: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(before)) {
    const b = before[k];
    const a = after[k];
    if (same(a, b)) continue;
    if (isPlain(a) && isPlain(b)) out[k] = nestedDiff(b, a);
    else out[k] = b === undefined ? null : b;
  }
  return out;
}

function nestedDiff(before: Record<string, unknown>, after: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const b = before[k];
    const a = after[k];
    if (same(a, b)) continue;
    if (isPlain(a) && isPlain(b)) out[k] = nestedDiff(b, a);
    else out[k] = b === undefined ? null : b;
  }
  return out;
}

/**
 * The object as it was before the change, rebuilt from the object after it and its `previous_attributes` (hashes
 * merged key by key, anything else replaced), so that both can be rendered in another version and compared again.
 */
export function objectBefore(after: Record<string, unknown>, previous: Record<string, unknown>): Record<string, unknown> {
  const before = structuredClone(after);
  overlay(before, previous);
  return before;
}

function overlay(target: Record<string, unknown>, previous: Record<string, unknown>): void {
  for (const k of Object.keys(previous)) {
    const old = previous[k];
    const current = target[k];
    if (isPlain(old) && isPlain(current)) overlay(current, old);
    else target[k] = structuredClone(old);
  }
}
