/**
 * v1 credit notes (`/v1/credit_notes`, `preview`, `preview/lines`, `:id/lines`, `:id/void`) on finalized invoices.
 *
 * A credit note credits invoice lines (`lines[]` of type invoice_line_item, by amount or quantity, or the whole line),
 * custom lines, or a bare `amount`. Its amounts:
 *  - each credited invoice line takes its share of the line's discounts and billing credits: for a credit of `a` on a
 *    line of amount A, each discount or credit e of the line contributes round(e x (c + a) / A) - round(e x c / A),
 *    where c is what earlier credit notes credited on that line, so crediting a line in several notes never credits
 *    more (or less) of a discount than the line had; total = subtotal - discount_amount - credits.
 *  - limits (Stripe's): a line is credited at most its amount; the note's total at most what is left of the invoice
 *    (total - earlier pre- and post-payment credit notes).
 *  - on an open invoice the total reduces what is due (pre_payment_amount, at most amount_remaining; the invoice is
 *    paid when nothing is left); what exceeds it, and every credit on a paid invoice, is post_payment_amount, split
 *    into credit_amount (the customer's balance is credited with a customer balance transaction of type credit_note)
 *    and out_of_band_amount; credit_amount defaults to all of it. Refunds need charges, which are not emulated:
 *    refund_amount and refunds are refused.
 * Voiding undoes the note's effects (the invoice's credit note amounts, the balance credit), while the invoice it
 * reduced is still open or the note is post-payment only.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint, listResult } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, MissingParamError } from '../../shared/errors';
import { loadResource } from './resource';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, pageOfArray, readCreatedRange, readMetadata, recordBillingEvent, type Metadata } from './common';
import { loadInvoice, saveInvoice, timeFor, type InvoiceObject, type LineItem } from './invoice-model';
import { markPaid } from './invoice-transitions';
import { recomputeTotals, type PretaxCreditAmount } from './invoice-totals';
import { recordCustomerBalanceTransaction } from './balance';
import { parseAmount } from './pricing';
import { creditedShare } from './allocation';

export const CREDIT_NOTE_TYPE = 'credit_note';

export interface CreditNoteLine {
  id: string;
  object: 'credit_note_line_item';
  amount: number;
  description: string | null;
  discount_amount: number;
  discount_amounts: Array<{ amount: number; discount: string }>;
  invoice_line_item?: string;
  livemode: boolean;
  metadata: Metadata;
  pretax_credit_amounts: PretaxCreditAmount[];
  quantity: number | null;
  tax_rates: unknown[];
  taxes: unknown[];
  type: 'custom_line_item' | 'invoice_line_item';
  unit_amount: number | null;
  unit_amount_decimal: string | null;
}

export interface CreditNoteObject {
  id: string;
  object: 'credit_note';
  amount: number;
  amount_shipping: number;
  created: number;
  currency: string;
  customer: string;
  customer_account: null;
  customer_balance_transaction: string | null;
  discount_amount: number;
  discount_amounts: Array<{ amount: number; discount: string }>;
  effective_at: number | null;
  invoice: string;
  lines: { object: 'list'; data: CreditNoteLine[]; has_more: boolean; url: string };
  livemode: boolean;
  memo: string | null;
  metadata: Metadata;
  number: string;
  out_of_band_amount: number | null;
  pdf: string;
  post_payment_amount: number;
  pre_payment_amount: number;
  pretax_credit_amounts: PretaxCreditAmount[];
  reason: string | null;
  refunds: unknown[];
  shipping_cost: null;
  status: 'issued' | 'void';
  subtotal: number;
  subtotal_excluding_tax: number;
  total: number;
  total_excluding_tax: number;
  total_taxes: unknown[];
  type: 'pre_payment' | 'post_payment' | 'mixed';
  voided_at: number | null;
  /** What the note credited: the customer balance (credit_amount). */
  _credit_amount: number;
}

const PARAMS = [
  'invoice',
  'amount',
  'credit_amount',
  'effective_at',
  'email_type',
  'lines',
  'memo',
  'metadata',
  'out_of_band_amount',
  'reason',
  'refund_amount',
  'refunds',
  'shipping_cost',
  'expand',
];
const REASONS = ['duplicate', 'fraudulent', 'order_change', 'product_unsatisfactory'];

function roundDiv(n: bigint, d: bigint): bigint {
  return (2n * n + d) / (2n * d);
}

/** What earlier (issued) credit notes credited on each invoice line, and the invoice's notes so far. */
async function earlierNotes(store: StateStore, p: Principal, invoice: string): Promise<{ notes: CreditNoteObject[]; credited: Map<string, number> }> {
  const notes: CreditNoteObject[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await store.listObjects<CreditNoteObject>(p.account, CREDIT_NOTE_TYPE, { limit: 100, startingAfter: cursor, where: { invoice } });
    notes.push(...page.data.map((o) => o.data));
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  const credited = new Map<string, number>();
  for (const n of notes) {
    if (n.status !== 'issued') continue;
    for (const l of n.lines.data) if (l.invoice_line_item) credited.set(l.invoice_line_item, (credited.get(l.invoice_line_item) ?? 0) + l.amount);
  }
  return { notes, credited };
}

/** Share of each of the line's discounts and credits for crediting `amount` after `before` was credited already. */
function sharesOf(line: LineItem, before: number, amount: number): PretaxCreditAmount[] {
  return (line.pretax_credit_amounts as PretaxCreditAmount[]).map((e) => ({ ...e, amount: creditedShare(e.amount, line.amount, before, amount) }));
}

function unitTimes(quantity: number, unitDecimal: string, param: string): number {
  let unit: bigint;
  try {
    unit = parseAmount(unitDecimal);
  } catch {
    throw new InvalidParamError(param, `Invalid decimal: ${unitDecimal}`);
  }
  return Number(roundDiv(BigInt(quantity) * unit, 10n ** 12n));
}

/** Reads the request and computes the credit note (not stored). */
async function buildCreditNote(
  s: Services,
  store: StateStore,
  p: Principal,
  params: Params,
  extra: string[] = [],
): Promise<{ cn: CreditNoteObject; inv: InvoiceObject }> {
  const r = new ParamReader(params);
  r.assertNoUnknown([...PARAMS, ...extra]);
  const invoiceId = r.string('invoice', { required: true, maxLength: 5000 })!;
  const inv = await loadInvoice(store, p, invoiceId, 'invoice');
  if (inv.status === 'draft' || inv.status === 'void') {
    throw new InvalidRequestError(`You can only create a credit note for an invoice that is open, paid or uncollectible; this invoice is ${inv.status}.`, {
      param: 'invoice',
      code: 'invoice_unexpected_state',
    });
  }
  const amountParam = r.integer('amount', { min: 0 });
  const creditParam = r.integer('credit_amount', { min: 0 });
  const oobParam = r.integer('out_of_band_amount', { min: 0 });
  const refundParam = r.integer('refund_amount', { min: 0 });
  if ((refundParam ?? 0) > 0 || r.has('refunds')) {
    throw new InvalidParamError(
      r.has('refunds') ? 'refunds' : 'refund_amount',
      'Refunds are not supported here (no charges are emulated); use credit_amount or out_of_band_amount.',
    );
  }
  if (r.has('shipping_cost')) throw new InvalidParamError('shipping_cost', 'Shipping costs are not supported.');
  r.string('email_type', { enum: ['credit_note', 'none'] });
  const reason = r.string('reason', { enum: REASONS }) ?? null;
  const memo = r.string('memo', { maxLength: 5000 }) ?? null;
  const now = await timeFor(s, store, p, inv.test_clock);
  const effectiveAt = r.integer('effective_at', { min: 0 }) ?? null;
  const { notes, credited } = await earlierNotes(store, p, inv.id);
  const id = newId('cn', p.livemode);
  const lines: CreditNoteLine[] = [];
  const lineParams = r.objectArray('lines', { maxItems: 250 });
  const seen = new Map<string, number>();
  for (const lp of lineParams ?? []) {
    lp.assertNoUnknown([
      'type',
      'invoice_line_item',
      'amount',
      'quantity',
      'description',
      'unit_amount',
      'unit_amount_decimal',
      'metadata',
      'tax_amounts',
      'tax_rates',
    ]);
    const type = lp.string('type', { required: true, enum: ['custom_line_item', 'invoice_line_item'] }) as CreditNoteLine['type'];
    if (lp.has('tax_amounts') || lp.has('tax_rates')) throw new InvalidParamError(lp.param('tax_rates'), 'Taxes are not supported on credit note lines.');
    const base = { object: 'credit_note_line_item' as const, livemode: p.livemode, metadata: readMetadata(lp) ?? {}, tax_rates: [], taxes: [] };
    if (type === 'invoice_line_item') {
      const lineId = lp.string('invoice_line_item', { required: true, maxLength: 5000 })!;
      const line = inv.lines.data.find((l) => l.id === lineId);
      if (!line) throw new InvalidParamError(lp.param('invoice_line_item'), `The invoice line item ${lineId} is not on invoice ${inv.id}.`);
      const before = (credited.get(lineId) ?? 0) + (seen.get(lineId) ?? 0);
      const quantity = lp.integer('quantity', { min: 1 });
      let amount = lp.integer('amount', { min: 0 });
      if (amount !== undefined && quantity !== undefined) throw new InvalidParamError(lp.param('quantity'), 'You may only specify one of amount and quantity.');
      if (quantity !== undefined) {
        const unit = line.pricing?.unit_amount_decimal;
        if (!unit) throw new InvalidParamError(lp.param('quantity'), `The invoice line item ${lineId} has no unit amount; credit it by amount.`);
        amount = unitTimes(quantity, unit, lp.param('quantity'));
      }
      amount ??= line.amount - before;
      if (before + amount > line.amount) {
        throw new InvalidParamError(
          lp.param(quantity !== undefined ? 'quantity' : 'amount'),
          `The credit note line amount (${amount}) exceeds what is left to credit on invoice line item ${lineId} (${line.amount - before}).`,
        );
      }
      seen.set(lineId, (seen.get(lineId) ?? 0) + amount);
      const shares = sharesOf(line, before, amount);
      const discounts = shares.filter((x) => x.type === 'discount').map((x) => ({ amount: x.amount, discount: x.discount! }));
      lines.push({
        id: newId('cnli', p.livemode),
        ...base,
        amount,
        description: lp.string('description', { maxLength: 5000 }) ?? line.description,
        discount_amount: discounts.reduce((a, x) => a + x.amount, 0),
        discount_amounts: discounts,
        invoice_line_item: lineId,
        pretax_credit_amounts: shares.filter((x) => x.amount > 0),
        quantity: quantity ?? line.quantity,
        type,
        unit_amount: null,
        unit_amount_decimal: line.pricing?.unit_amount_decimal ?? null,
      });
    } else {
      const description = lp.string('description', { required: true, maxLength: 5000 })!;
      const quantity = lp.integer('quantity', { min: 1 }) ?? 1;
      const unitAmount = lp.integer('unit_amount', { min: 0 });
      const unitDecimal = lp.string('unit_amount_decimal', { maxLength: 40 });
      if (unitAmount === undefined && unitDecimal === undefined) throw new MissingParamError(lp.param('unit_amount'));
      const unit = unitDecimal ?? String(unitAmount);
      lines.push({
        id: newId('cnli', p.livemode),
        ...base,
        amount: unitTimes(quantity, unit, lp.param(unitDecimal !== undefined ? 'unit_amount_decimal' : 'unit_amount')),
        description,
        discount_amount: 0,
        discount_amounts: [],
        pretax_credit_amounts: [],
        quantity,
        type,
        unit_amount: unitAmount ?? null,
        unit_amount_decimal: unitDecimal ?? String(unitAmount),
      });
    }
  }
  if (lines.length === 0) {
    const amount = amountParam ?? (creditParam ?? 0) + (oobParam ?? 0);
    if (amountParam === undefined && creditParam === undefined && oobParam === undefined) {
      throw new InvalidRequestError('You must pass one of amount, lines, credit_amount, refund_amount or out_of_band_amount.', { param: 'amount' });
    }
    lines.push({
      id: newId('cnli', p.livemode),
      object: 'credit_note_line_item',
      amount,
      description: memo,
      discount_amount: 0,
      discount_amounts: [],
      livemode: p.livemode,
      metadata: {},
      pretax_credit_amounts: [],
      quantity: 1,
      tax_rates: [],
      taxes: [],
      type: 'custom_line_item',
      unit_amount: amount,
      unit_amount_decimal: String(amount),
    });
  }
  const subtotal = lines.reduce((a, l) => a + l.amount, 0);
  const pretax = lines.flatMap((l) => l.pretax_credit_amounts);
  const total = subtotal - pretax.reduce((a, x) => a + x.amount, 0);
  if (amountParam !== undefined && lineParams && amountParam !== total) {
    throw new InvalidParamError('amount', `The amount (${amountParam}) does not match the total of the credit note's lines (${total}).`);
  }
  const left = inv.total - inv.pre_payment_credit_notes_amount - inv.post_payment_credit_notes_amount;
  if (total > left) {
    throw new InvalidParamError(
      amountParam !== undefined ? 'amount' : 'lines',
      `The credit note's total (${total}) is greater than the amount left to credit on invoice ${inv.id} (${left}).`,
    );
  }
  const pre = inv.status === 'paid' ? 0 : Math.min(total, inv.amount_remaining);
  const post = total - pre;
  let creditAmount = creditParam ?? 0;
  let oob = oobParam ?? 0;
  if (creditParam === undefined && oobParam === undefined) creditAmount = post;
  else if (creditAmount + oob !== post) {
    throw new InvalidParamError(
      creditParam !== undefined ? 'credit_amount' : 'out_of_band_amount',
      `The sum of credit_amount, refund_amount and out_of_band_amount (${creditAmount + oob}) must equal the credit note's post-payment amount (${post}).`,
    );
  }
  if (post === 0) oob = 0;
  const discountTotals = new Map<string, number>();
  const pretaxTotals = new Map<string, PretaxCreditAmount>();
  for (const x of pretax) {
    if (x.type === 'discount') discountTotals.set(x.discount!, (discountTotals.get(x.discount!) ?? 0) + x.amount);
    const key = x.discount ?? x.credit_balance_transaction ?? '';
    const cur = pretaxTotals.get(key);
    pretaxTotals.set(key, cur ? { ...cur, amount: cur.amount + x.amount } : { ...x });
  }
  const discountAmounts = [...discountTotals].map(([discount, amount]) => ({ amount, discount }));
  const cn: CreditNoteObject = {
    id,
    object: 'credit_note',
    amount: total,
    amount_shipping: 0,
    created: now,
    currency: inv.currency,
    customer: inv.customer,
    customer_account: null,
    customer_balance_transaction: null,
    discount_amount: discountAmounts.reduce((a, x) => a + x.amount, 0),
    discount_amounts: discountAmounts,
    effective_at: effectiveAt ?? now,
    invoice: inv.id,
    lines: { object: 'list', data: lines, has_more: false, url: `/v1/credit_notes/${id}/lines` },
    livemode: p.livemode,
    memo,
    metadata: readMetadata(r) ?? {},
    number: `${inv.number ?? inv.id}-CN-${String(notes.length + 1).padStart(2, '0')}`,
    out_of_band_amount: oob > 0 ? oob : null,
    pdf: '',
    post_payment_amount: post,
    pre_payment_amount: pre,
    pretax_credit_amounts: [...pretaxTotals.values()].filter((x) => x.amount > 0),
    reason,
    refunds: [],
    shipping_cost: null,
    status: 'issued',
    subtotal,
    subtotal_excluding_tax: subtotal,
    total,
    total_excluding_tax: total,
    total_taxes: [],
    type: post === 0 ? 'pre_payment' : pre === 0 ? 'post_payment' : 'mixed',
    voided_at: null,
    _credit_amount: post === 0 ? 0 : creditAmount,
  };
  return { cn, inv };
}

export function renderCreditNote(cn: CreditNoteObject): Record<string, unknown> {
  const { _credit_amount: _c, ...rest } = cn;
  return { ...rest, lines: { ...cn.lines, data: cn.lines.data.slice(0, 10), has_more: cn.lines.data.length > 10 } };
}

function loadCreditNote(store: StateStore, p: Principal, id: string): Promise<CreditNoteObject> {
  return loadResource<CreditNoteObject>(store, p, { type: CREDIT_NOTE_TYPE, noun: 'credit note' }, id);
}

async function createCreditNote(s: Services, p: Principal, params: Params) {
  const cn = await s.state.transaction(async (tx) => {
    const { cn, inv } = await buildCreditNote(s, tx, p, params);
    const before = structuredClone(inv);
    if (cn._credit_amount > 0) {
      const txn = await recordCustomerBalanceTransaction(tx, p, inv.customer, {
        amount: -cn._credit_amount,
        currency: inv.currency,
        type: 'credit_note',
        credit_note: cn.id,
        invoice: inv.id,
      });
      cn.customer_balance_transaction = txn.id;
    }
    await tx.insertObject({ account: p.account, type: CREDIT_NOTE_TYPE, id: cn.id, createdMs: s.now(), data: cn });
    await recordBillingEvent(tx, p, 'credit_note.created', renderCreditNote(cn));
    inv.pre_payment_credit_notes_amount += cn.pre_payment_amount;
    inv.post_payment_credit_notes_amount += cn.post_payment_amount;
    recomputeTotals(inv);
    await saveInvoice(tx, p, inv, 'invoice.updated', before);
    if (cn.pre_payment_amount > 0 && inv.amount_remaining === 0 && (inv.status === 'open' || inv.status === 'uncollectible')) {
      await markPaid(tx, p, inv, cn.created);
    }
    return cn;
  });
  return json(200, await expandBilling(s.state, p, renderCreditNote(cn), expandParam(params)));
}

export function registerCreditNoteRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/credit_notes',
    apiEndpoint(s, (p, _req, params) => createCreditNote(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/credit_notes/preview',
    apiEndpoint(s, async (p, _req, params) => {
      const { cn } = await buildCreditNote(s, s.state, p, params);
      return json(200, await expandBilling(s.state, p, { ...renderCreditNote(cn), id: null }, expandParam(params)));
    }),
  );

  http.route(
    'GET',
    '/v1/credit_notes/preview/lines',
    apiEndpoint(s, async (p, _req, params) => {
      const page = readListParams(new ParamReader(params));
      const { cn } = await buildCreditNote(s, s.state, p, params, ['limit', 'starting_after', 'ending_before']);
      const res = pageOfArray(cn.lines.data, page);
      return listResult('/v1/credit_notes/preview/lines', res.data, res.hasMore);
    }),
  );

  http.route(
    'GET',
    '/v1/credit_notes',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'customer', 'customer_account', 'invoice', 'created', 'expand']);
      const page = readListParams(r);
      const where: Record<string, string> = {};
      const customer = r.string('customer', { maxLength: 5000 });
      if (customer) where.customer = customer;
      const invoice = r.string('invoice', { maxLength: 5000 });
      if (invoice) where.invoice = invoice;
      return listEndpoint<CreditNoteObject>(
        s,
        p,
        '/v1/credit_notes',
        CREDIT_NOTE_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        undefined,
        renderCreditNote,
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/credit_notes/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderCreditNote(await loadCreditNote(s.state, p, req.params[0])), expandParam(params)));
    }),
  );

  http.route(
    'GET',
    '/v1/credit_notes/:id/lines',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'expand']);
      const cn = await loadCreditNote(s.state, p, req.params[0]);
      const res = pageOfArray(cn.lines.data, readListParams(r));
      return listResult(`/v1/credit_notes/${cn.id}/lines`, res.data, res.hasMore);
    }),
  );

  http.route(
    'POST',
    '/v1/credit_notes/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['memo', 'metadata', 'expand']);
      const cn = await s.state.transaction(async (tx) => {
        const cn = await loadCreditNote(tx, p, req.params[0]);
        const before = renderCreditNote(structuredClone(cn));
        const memo = r.string('memo', { maxLength: 5000, allowEmpty: true });
        if (memo !== undefined) cn.memo = memo === '' ? null : memo;
        const md = readMetadata(r, cn.metadata);
        if (md !== undefined) cn.metadata = md;
        await tx.updateObject(p.account, CREDIT_NOTE_TYPE, cn.id, cn);
        await recordBillingEvent(tx, p, 'credit_note.updated', renderCreditNote(cn), before);
        return cn;
      });
      return json(200, await expandBilling(s.state, p, renderCreditNote(cn), expandParam(params)));
    }),
  );

  http.route(
    'POST',
    '/v1/credit_notes/:id/void',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const cn = await s.state.transaction(async (tx) => {
        const cn = await loadCreditNote(tx, p, req.params[0]);
        if (cn.status === 'void') throw new InvalidRequestError('This credit note has already been voided.', { code: 'credit_note_already_voided' });
        const inv = await loadInvoice(tx, p, cn.invoice);
        if (cn.pre_payment_amount > 0 && inv.status !== 'open' && inv.status !== 'uncollectible') {
          throw new InvalidRequestError(`This credit note reduced invoice ${inv.id}, which is now ${inv.status}; it can no longer be voided.`, {
            code: 'invoice_unexpected_state',
          });
        }
        const before = renderCreditNote(structuredClone(cn));
        const invBefore = structuredClone(inv);
        cn.status = 'void';
        cn.voided_at = await timeFor(s, tx, p, inv.test_clock);
        if (cn._credit_amount > 0) {
          await recordCustomerBalanceTransaction(tx, p, cn.customer, {
            amount: cn._credit_amount,
            currency: cn.currency,
            type: 'credit_note',
            credit_note: cn.id,
            invoice: inv.id,
            description: `Void of credit note ${cn.number}`,
          });
        }
        await tx.updateObject(p.account, CREDIT_NOTE_TYPE, cn.id, cn);
        await recordBillingEvent(tx, p, 'credit_note.voided', renderCreditNote(cn), before);
        inv.pre_payment_credit_notes_amount -= cn.pre_payment_amount;
        inv.post_payment_credit_notes_amount -= cn.post_payment_amount;
        recomputeTotals(inv);
        if (inv.status === 'void') inv.amount_remaining = 0;
        await saveInvoice(tx, p, inv, 'invoice.updated', invBefore);
        return cn;
      });
      return json(200, await expandBilling(s.state, p, renderCreditNote(cn), expandParam(params)));
    }),
  );
}
