/**
 * Proration of licensed subscription items on a mid-period change (quantity, price, item added or removed), as
 * proration_behavior create_prorations (the default) does: one pending invoice item crediting the unused time of the
 * old item (negative) and one charging the remaining time of the new one, both proration: true, parent
 * subscription_details, period [change time, period end); the next invoice of the subscription sweeps them.
 * proration_behavior none creates nothing; always_invoice is treated as create_prorations (the items wait for the
 * next invoice instead of being invoiced at once).
 *
 * Amount: the exact price amount of the quantity (pricing.exactAmount, 10^27 scale) x remaining seconds / period
 * seconds, rounded half up to the minor unit once per item. Metered items are never prorated.
 */
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { newId } from '../../shared/ids';
import { formatScaled } from '../../shared/decimal';
import { recordBillingEvent } from './common';
import { exactAmount } from './pricing';
import type { PriceObject } from './prices';
import { INVOICE_ITEM_TYPE, type InvoiceItemObject } from './invoice-model';

const SCALE27 = 10n ** 27n;

interface ItemState {
  id: string;
  price: PriceObject;
  quantity?: number;
}

interface SubLike {
  id: string;
  customer: string;
  currency: string;
  test_clock: string | null;
  items: { data: ItemState[] };
}

function licensed(it: ItemState): boolean {
  return it.price.recurring?.usage_type !== 'metered';
}

/** Minor units (rounded half up on the magnitude) for `quantity` of `price` over remaining/total of a period. */
export function proratedAmount(price: PriceObject, quantity: number, remaining: number, total: number): number {
  const exact = exactAmount(price as unknown as Parameters<typeof exactAmount>[0], BigInt(quantity) * 10n ** 15n) * BigInt(remaining);
  const den = SCALE27 * BigInt(total);
  return Number((exact * 2n + den) / (2n * den));
}

function productName(price: PriceObject): string {
  const prod = price.product as unknown;
  return typeof prod === 'object' && prod !== null && 'name' in prod ? String((prod as { name: unknown }).name) : String(prod);
}

/** Creates the proration invoice items for the change from `before` to `after` at `now` within [start, end). */
export async function createProrations(
  tx: StateStore,
  p: Principal,
  before: SubLike,
  after: SubLike,
  now: number,
  start: number,
  end: number,
  nowMs: number,
): Promise<InvoiceItemObject[]> {
  if (!(now > start && now < end)) return [];
  const remaining = end - now;
  const total = end - start;
  const out: InvoiceItemObject[] = [];
  const when = new Date(now * 1000).toISOString().slice(0, 10);
  const add = async (it: ItemState, sign: 1 | -1) => {
    const qty = it.quantity ?? 1;
    const amount = sign * proratedAmount(it.price, qty, remaining, total);
    const label = sign < 0 ? 'Unused time on' : 'Remaining time on';
    const ii: InvoiceItemObject = {
      id: newId('ii', p.livemode),
      object: 'invoiceitem',
      amount,
      currency: after.currency,
      customer: after.customer,
      date: now,
      description: `${label} ${qty} × ${productName(it.price)} after ${when}`,
      discountable: false,
      discounts: [],
      invoice: null,
      livemode: p.livemode,
      metadata: {},
      net_amount: amount,
      parent: { type: 'subscription_details', subscription_details: { subscription: after.id, subscription_item: it.id } },
      period: { start: now, end },
      pricing: {
        type: 'price_details',
        price_details: { price: it.price.id, product: String(it.price.product) },
        unit_amount_decimal: formatScaled((BigInt(amount) * 10n ** 15n) / BigInt(qty)),
      } as InvoiceItemObject['pricing'],
      proration: true,
      quantity: qty,
      quantity_decimal: String(qty),
      tax_rates: [],
      test_clock: after.test_clock,
      customer_account: null,
    };
    await tx.insertObject({ account: p.account, type: INVOICE_ITEM_TYPE, id: ii.id, createdMs: nowMs, data: ii });
    await recordBillingEvent(tx, p, 'invoiceitem.created', ii);
    out.push(ii);
  };
  const old = new Map(before.items.data.map((i) => [i.id, i]));
  const cur = new Map(after.items.data.map((i) => [i.id, i]));
  for (const [id, o] of old) {
    const n = cur.get(id);
    const changed = !n || n.price.id !== o.price.id || (n.quantity ?? 1) !== (o.quantity ?? 1);
    if (changed && licensed(o)) await add(o, -1);
  }
  for (const [id, n] of cur) {
    const o = old.get(id);
    const changed = !o || n.price.id !== o.price.id || (n.quantity ?? 1) !== (o.quantity ?? 1);
    if (changed && licensed(n)) await add(n, 1);
  }
  return out;
}
