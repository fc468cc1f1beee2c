/**
 * The invoice state machine (Stripe's): draft -> open (finalize; or automatically once the customer's time passes
 * automatically_finalizes_at = created + 1 hour, the finalization grace period) -> paid | void | uncollectible;
 * uncollectible -> paid | void. Paying a draft finalizes it first (as Stripe does). An invoice finalized with
 * amount_due 0 is paid at once.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { InvalidRequestError } from '../../shared/errors';
import { CUSTOMER_TYPE, type CustomerObject } from './customers';
import { recordBalanceTransaction } from './balance';
import { INVOICE_TYPE, loadInvoice, saveInvoice, type InvoiceObject, type InvoiceStatus } from './invoice-model';
import { applyCustomerBalance, recomputeTotals } from './invoice-totals';
import { applyUsage, refreshUsage } from './invoice-lines';

export function badState(message: string): InvalidRequestError {
  return new InvalidRequestError(message, { code: 'invoice_unexpected_state' });
}

/** draft -> open (-> paid when nothing is due). `usage` from refreshUsage, measured before the transaction. */
export async function finalizeIn(tx: StateStore, p: Principal, inv: InvoiceObject, now: number, usage?: Map<string, bigint>): Promise<InvoiceObject> {
  if (inv.status !== 'draft') throw badState("This invoice is already finalized, you can't re-finalize a non-draft invoice.");
  const before = structuredClone(inv);
  if (usage) await applyUsage(tx, p, inv, usage);
  const cust = await tx.getObject<CustomerObject>(p.account, CUSTOMER_TYPE, inv.customer);
  if (cust && !(cust.data as { deleted?: boolean }).deleted) {
    const seq = cust.data.next_invoice_sequence;
    inv.number = `${cust.data.invoice_prefix}-${String(seq).padStart(4, '0')}`;
    cust.data.next_invoice_sequence = seq + 1;
    await tx.updateObject(p.account, CUSTOMER_TYPE, cust.data.id, cust.data);
  }
  if (finalizeHooks.applyCredits) await finalizeHooks.applyCredits(tx, p, inv, now);
  recomputeTotals(inv);
  if (cust && !(cust.data as { deleted?: boolean }).deleted) await applyCustomerBalance(tx, p, inv, cust.data);
  inv.status = 'open';
  inv.status_transitions.finalized_at = now;
  inv.effective_at = now;
  inv.automatically_finalizes_at = null;
  inv.ending_balance ??= 0;
  await saveInvoice(tx, p, inv, 'invoice.finalized', before);
  if (inv.amount_due === 0) await markPaid(tx, p, inv, now);
  return inv;
}

/** Hooks set by credit-grants.ts (avoids an import cycle): apply billing credits at finalization, give them back on void. */
export const finalizeHooks: {
  applyCredits?: (tx: StateStore, p: Principal, inv: InvoiceObject, now: number) => Promise<void>;
  restoreCredits?: (tx: StateStore, p: Principal, inv: InvoiceObject, now: number) => Promise<void>;
  expireCredits?: (tx: StateStore, p: Principal, customer: string, now: number) => Promise<void>;
} = {};

export async function markPaid(tx: StateStore, p: Principal, inv: InvoiceObject, now: number, outOfBand = false): Promise<void> {
  const before = structuredClone(inv);
  const paid = inv.amount_remaining;
  inv.amount_paid += paid;
  inv.amount_remaining = 0;
  inv.status = 'paid';
  inv.attempted = true;
  inv.status_transitions.paid_at = now;
  inv.auto_advance = false;
  await saveInvoice(tx, p, inv, 'invoice.paid', before);
  // The emulated charge moves the account balance; a payment made out of band does not.
  if (paid > 0 && !outOfBand) {
    await recordBalanceTransaction(tx, p, {
      amount: paid,
      currency: inv.currency,
      type: 'charge',
      source: inv.id,
      description: `Payment for invoice ${inv.number ?? inv.id}`,
    });
  }
}

export async function payIn(
  tx: StateStore,
  p: Principal,
  inv: InvoiceObject,
  now: number,
  usage?: Map<string, bigint>,
  outOfBand = false,
): Promise<InvoiceObject> {
  if (inv.status === 'paid') throw badState('Invoice is already paid');
  if (inv.status === 'void') throw badState('You can only pay an invoice in status open, draft or uncollectible; this invoice is void.');
  if (inv.status === 'draft') {
    await finalizeIn(tx, p, inv, now, usage);
    if ((inv.status as InvoiceStatus) !== 'open') return inv;
  }
  await markPaid(tx, p, inv, now, outOfBand);
  return inv;
}

/** Finalizes the customer's drafts whose grace period ended by `now` (auto_advance). */
export async function autoFinalize(s: Services, p: Principal, customerId: string, now: number): Promise<void> {
  const expire = finalizeHooks.expireCredits;
  if (expire) await s.state.transaction((tx) => expire(tx, p, customerId, now));
  const drafts = await s.state.listObjects<InvoiceObject>(p.account, INVOICE_TYPE, { limit: 100, where: { customer: customerId, status: 'draft' } });
  for (const d of drafts.data) {
    const at = d.data.automatically_finalizes_at;
    if (!d.data.auto_advance || at === null || at > now) continue;
    const usage = await refreshUsage(s, p, d.data);
    await s.state.transaction(async (tx) => {
      const inv = await loadInvoice(tx, p, d.id);
      if (inv.status === 'draft') await finalizeIn(tx, p, inv, now, usage);
    });
  }
}
