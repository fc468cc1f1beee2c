/**
 * The latest webhook delivery attempts of each account, kept in memory by the process that made them, for the
 * dashboard (`GET /dashboard/api/live`). Stripe shows attempts in its dashboard, not through its API; here they are a
 * bounded list per account that a restart empties (the deliveries themselves are persisted, see webhooks.ts).
 */
const PER_ACCOUNT = 20;
const MAX_ACCOUNTS = 1000;

export interface DeliveryAttempt {
  /** Milliseconds since the epoch, when the attempt finished. */
  at: number;
  endpoint: string;
  url: string;
  event: string;
  event_type: string;
  attempt: number;
  /** null when the attempt succeeded. */
  error: string | null;
  duration_ms: number;
  /** delivered, retry_scheduled or abandoned. */
  outcome: string;
}

const byAccount = new Map<string, DeliveryAttempt[]>();

export function recordDeliveryAttempt(account: string, attempt: DeliveryAttempt): void {
  let list = byAccount.get(account);
  if (!list) {
    if (byAccount.size >= MAX_ACCOUNTS) {
      const oldest = byAccount.keys().next().value;
      if (oldest !== undefined) byAccount.delete(oldest);
    }
    byAccount.set(account, (list = []));
  }
  list.unshift(attempt);
  if (list.length > PER_ACCOUNT) list.length = PER_ACCOUNT;
}

/** Newest first. */
export function recentDeliveryAttempts(account: string): DeliveryAttempt[] {
  return [...(byAccount.get(account) ?? [])];
}
