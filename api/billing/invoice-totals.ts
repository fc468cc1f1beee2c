/**
 * An invoice's amounts: subtotal, discounts split across lines, billing credits, the customer balance used at
 * finalization and credit notes.
 */
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import type { CustomerObject } from './customers';
import { recordCustomerBalanceTransaction } from './balance';
import { allocateDiscounts, type DiscountRule } from './allocation';
import { appliedFrom } from './discounts';
import type { DiscountObject } from './coupons';
import type { InvoiceObject, LineItem } from './invoice-model';

export interface PretaxCreditAmount {
  amount: number;
  type: 'discount' | 'credit_balance_transaction';
  discount?: string;
  credit_balance_transaction?: string;
}

function lineProduct(l: LineItem): string | null {
  return l.pricing?.price_details?.product ?? null;
}

/**
 * Subtotal, discounts (allocation.ts: each discount's total rounded once, split exactly across its lines), the billing
 * credits already applied (set at finalization), the customer balance used at finalization and pre-payment credit
 * notes: total = subtotal - discounts - credits; amount_due = total - balance used - pre-payment credit notes (>= 0).
 */
export function recomputeTotals(inv: InvoiceObject): void {
  const lines = inv.lines.data;
  const subtotal = lines.reduce((a, l) => a + l.amount, 0);
  const applied = inv._discounts ?? [];
  const rules: DiscountRule[] = applied.map((d) => ({
    id: d.id,
    percentOff: d.percent_off,
    amountOff: d.amount_off,
    eligible: (i: number) => d.products === null || d.products.includes(lineProduct(lines[i]) ?? ''),
  }));
  const alloc = allocateDiscounts(
    lines.map((l) => l.amount),
    lines.map((l) => l.discountable),
    rules,
  );
  let discountTotal = 0;
  let creditTotal = 0;
  const credits: PretaxCreditAmount[] = [];
  lines.forEach((l, i) => {
    const mine = rules.map((r, k) => ({ amount: alloc[k][i], discount: r.id })).filter((_x, k) => l.discountable && rules[k].eligible(i));
    l.discount_amounts = mine;
    const lineCredits = (l.pretax_credit_amounts as PretaxCreditAmount[]).filter((c) => c.type === 'credit_balance_transaction');
    l.pretax_credit_amounts = [
      ...mine.filter((m) => m.amount > 0).map((m) => ({ amount: m.amount, discount: m.discount, type: 'discount' as const })),
      ...lineCredits,
    ];
    for (const c of lineCredits) {
      creditTotal += c.amount;
      credits.push(c);
    }
  });
  inv.total_discount_amounts = rules.map((r, k) => {
    const amount = alloc[k].reduce((a, x) => a + x, 0);
    discountTotal += amount;
    return { amount, discount: r.id };
  });
  inv.total_pretax_credit_amounts = [
    ...(inv.total_discount_amounts as Array<{ amount: number; discount: string }>).filter((d) => d.amount > 0).map((d) => ({ ...d, type: 'discount' })),
    ...credits,
  ];
  inv.discounts = applied.map((d) => d.id);
  inv.subtotal = subtotal;
  inv.subtotal_excluding_tax = subtotal;
  inv.total = subtotal - discountTotal - creditTotal;
  inv.total_excluding_tax = inv.total;
  const due = Math.max(0, inv.total - (inv._balance_applied ?? 0) - (inv.pre_payment_credit_notes_amount ?? 0));
  inv.amount_due = due;
  inv.amount_remaining = Math.max(0, due - inv.amount_paid);
}

/** Sets the invoice's discounts (in order) and recomputes its amounts. */
export function setInvoiceDiscounts(inv: InvoiceObject, discounts: DiscountObject[]): void {
  inv._discounts = discounts.map(appliedFrom);
  recomputeTotals(inv);
}

/**
 * The customer's balance at finalization (Stripe's rule): a credit (< 0) pays the invoice up to its total, a debit
 * (> 0) is added to what is due; either way a customer balance transaction (`applied_to_invoice`) moves the balance.
 */
export async function applyCustomerBalance(tx: StateStore, p: Principal, inv: InvoiceObject, customer: CustomerObject): Promise<void> {
  const balance = customer.balance;
  inv.starting_balance = balance;
  inv.ending_balance = balance;
  if (balance === 0 || (customer.currency !== null && customer.currency !== inv.currency)) return;
  const used = balance < 0 ? Math.min(-balance, Math.max(0, inv.total - (inv.pre_payment_credit_notes_amount ?? 0))) : -balance;
  if (used === 0) return;
  const txn = await recordCustomerBalanceTransaction(tx, p, customer.id, { amount: used, currency: inv.currency, type: 'applied_to_invoice', invoice: inv.id });
  inv.ending_balance = txn.ending_balance;
  inv._balance_applied = used;
  recomputeTotals(inv);
}
