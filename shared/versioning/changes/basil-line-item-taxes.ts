import { field, type ApiObject, type VersionChange } from '../change';

/**
 * 2025-03-31.basil replaced `tax_amounts` with `taxes` on invoice line items, `total_tax_amounts` (and `tax`) with
 * `total_taxes` on invoices, and removed `amount_excluding_tax` / `unit_amount_excluding_tax` from line items
 * (stripe-node 18.0.0: "Remove support for tax_amounts on … InvoiceLineItem"; "Remove support for amount_excluding_tax
 * and unit_amount_excluding_tax on … InvoiceLineItem"; "Add support for total_taxes on … Invoice"). meterd computes
 * no tax, so the amounts excluding tax are the amounts.
 */
export const lineItemTaxes: VersionChange = {
  id: 'invoice-taxes',
  release: '2025-03-31.basil',
  description:
    '`tax_amounts` → `taxes` on line items, `total_tax_amounts`/`tax` → `total_taxes` on invoices; `amount_excluding_tax`/`unit_amount_excluding_tax` removed from line items.',
  downgrade: {
    line_item(line) {
      line.tax_amounts = legacyTaxAmounts(line.taxes);
      delete line.taxes;
      line.amount_excluding_tax = line.amount ?? null;
      const pricing = field(line, 'pricing');
      line.unit_amount_excluding_tax = typeof pricing?.unit_amount_decimal === 'string' ? pricing.unit_amount_decimal : null;
    },
    invoice(inv) {
      const amounts = legacyTaxAmounts(inv.total_taxes);
      inv.total_tax_amounts = amounts;
      inv.tax = amounts.length === 0 ? null : amounts.reduce((sum, a) => sum + (typeof a.amount === 'number' ? a.amount : 0), 0);
      delete inv.total_taxes;
    },
  },
};

/** basil's tax entry `{amount, tax_behavior, tax_rate_details: {tax_rate}, taxability_reason, taxable_amount}` back to acacia's. */
export function legacyTaxAmounts(taxes: unknown): ApiObject[] {
  if (!Array.isArray(taxes)) return [];
  return taxes.map((t: ApiObject) => ({
    amount: t.amount,
    inclusive: t.tax_behavior === 'inclusive',
    tax_rate: field(t, 'tax_rate_details')?.tax_rate ?? null,
    taxability_reason: t.taxability_reason ?? null,
    taxable_amount: t.taxable_amount ?? null,
  }));
}
