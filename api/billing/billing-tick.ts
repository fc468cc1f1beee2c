/**
 * Billing on real time: a periodic job (every BILLING_TICK_MS, default 60 s) that runs the billing cycle of every
 * subscription NOT on a test clock whose current period has ended, and auto-finalizes drafts (not on a test clock)
 * whose grace period ended, and applies customers' cash balances to their open invoices (cash-balance.ts).
 * Test-clock subscriptions are billed by their clock's advance only.
 *
 * Safe with several API processes on one store (distributed mode): cycleSubscription bills each period in its own
 * transaction that re-reads the subscription through tx.getObject (SELECT ... FOR UPDATE in the shared store) and
 * re-checks that the period is still due, so a period is never billed twice; autoFinalize likewise re-reads the
 * invoice in its transaction and finalizes only a draft.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import { log } from '../../shared/logger';
import { autoFinalize } from './invoice-transitions';
import { INVOICE_TYPE, type InvoiceObject } from './invoice-model';
import { cycleSubscription } from './subscription-cycle';
import { SUBSCRIPTION_TYPE, type SubscriptionObject } from './subscription-model';
import { jobSlot, PeriodicJob } from './periodic-job';
import { reconcileCashBalances } from './cash-balance';

export class BillingTicker extends PeriodicJob {
  constructor(private readonly s: Services) {
    super('billing tick', s.config.billingTickMs);
  }

  /** One pass at the current real time. */
  async run(): Promise<void> {
    const now = Math.floor(this.s.now() / 1000);
    const subs = await this.s.state.scanType<SubscriptionObject>(SUBSCRIPTION_TYPE);
    for (const o of subs) {
      if (this.stopped) return;
      const sub = o.data;
      if (sub.test_clock || sub.status === 'canceled' || sub.items.data.length === 0) continue;
      const end = Math.min(...sub.items.data.map((it) => it.current_period_end));
      if (end > now) continue;
      const p: Principal = { account: o.account, livemode: (sub as { livemode?: unknown }).livemode === true };
      await cycleSubscription(this.s, p, o.id, now).catch((err) => {
        if (!this.stopped) log.warn('billing cycle failed', { subscription: o.id, err: String(err) });
      });
    }
    const drafts = await this.s.state.scanType<InvoiceObject>(INVOICE_TYPE);
    const customers = new Map<string, Principal>();
    for (const o of drafts) {
      const inv = o.data;
      if (inv.status !== 'draft' || inv.test_clock || !inv.auto_advance || inv.automatically_finalizes_at === null || inv.automatically_finalizes_at > now)
        continue;
      customers.set(`${o.account}/${inv.customer}`, { account: o.account, livemode: (inv as { livemode?: unknown }).livemode === true });
    }
    for (const [k, p] of customers) {
      if (this.stopped) return;
      await autoFinalize(this.s, p, k.slice(k.indexOf('/') + 1), now).catch((err) => {
        if (!this.stopped) log.warn('billing auto-finalize failed', { customer: k, err: String(err) });
      });
    }
    await reconcileCashBalances(this.s, () => this.stopped);
  }
}

const slot = jobSlot((s: Services) => new BillingTicker(s));
export const startBillingTicker = slot.start;
export const stopBillingTicker = slot.stop;
