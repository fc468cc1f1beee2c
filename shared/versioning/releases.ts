/**
 * The API versions meterd knows: Stripe's releases since the release model of 2024-09-30.acacia (a major release
 * twice a year, named, with breaking changes; a monthly release in between, carrying the major's name, without).
 * The dates are those of stripe-node's CHANGELOG, which pins each release as it ships (17.x acacia … 23.x endive).
 */
import { InvalidRequestError } from '../errors';

export type MajorRelease = 'acacia' | 'basil' | 'clover' | 'dahlia' | 'endive';

/** Oldest first; the last one is the newest, in which every response is built. */
export const RELEASES: readonly string[] = [
  '2024-09-30.acacia',
  '2024-10-28.acacia',
  '2024-11-20.acacia',
  '2024-12-18.acacia',
  '2025-01-27.acacia',
  '2025-02-24.acacia',
  '2025-03-31.basil',
  '2025-04-30.basil',
  '2025-05-28.basil',
  '2025-06-30.basil',
  '2025-07-30.basil',
  '2025-08-27.basil',
  '2025-09-30.clover',
  '2025-10-29.clover',
  '2025-11-17.clover',
  '2025-12-15.clover',
  '2026-01-28.clover',
  '2026-02-25.clover',
  '2026-03-25.dahlia',
  '2026-04-22.dahlia',
  '2026-05-27.dahlia',
  '2026-06-24.dahlia',
  '2026-07-29.dahlia',
  '2026-08-26.dahlia',
  '2026-09-30.endive',
  '2026-10-28.endive',
];

export const CURRENT_API_VERSION = RELEASES[RELEASES.length - 1];

const INDEX = new Map(RELEASES.map((v, i) => [v, i]));

export function isKnownVersion(version: string): boolean {
  return INDEX.has(version);
}

/** Position in the release table (older releases are smaller); throws for a version that is not in it. */
export function releaseIndex(version: string): number {
  const i = INDEX.get(version);
  if (i === undefined) throw new Error(`unknown API version ${version}`);
  return i;
}

/** True when `version` renders objects older than `release` (i.e. the change made in `release` must be undone). */
export function isBefore(version: string, release: string): boolean {
  return releaseIndex(version) < releaseIndex(release);
}

/**
 * A `Stripe-Version` header as sent, checked against the table. Stripe answers an unknown or malformed version with a
 * 400 invalid_request_error naming it; the same is done here (versions before acacia, and `.preview` versions, are
 * real on Stripe but not served here, so they get that answer too).
 */
export function checkApiVersion(raw: string): string {
  const version = raw.trim();
  if (INDEX.has(version)) return version;
  const shown = version.length > 100 ? `${version.slice(0, 100)}…` : version;
  throw new InvalidRequestError(`Invalid Stripe API version: ${shown}`);
}
