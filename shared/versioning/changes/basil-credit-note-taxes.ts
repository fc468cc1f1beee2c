import type { VersionChange } from '../change';
import { legacyTaxAmounts } from './basil-line-item-taxes';

/**
 * 2025-03-31.basil replaced `tax_amounts` with `taxes` on credit note line items and with `total_taxes` on credit
 * notes, and removed the lines' `amount_excluding_tax` / `unit_amount_excluding_tax`
 * (docs.stripe.com/changelog/basil/2025-03-31/invoice-tax-configurations; stripe-node 18.0.0: "Remove support for
 * tax_amounts on CreditNoteLineItem, CreditNote, and InvoiceLineItem"; "Remove support for amount_excluding_tax and
 * unit_amount_excluding_tax on CreditNoteLineItem and InvoiceLineItem"). meterd computes no tax, so the amounts
 * excluding tax are the amounts, as for invoice line items.
 */
export const creditNoteTaxes: VersionChange = {
  id: 'credit-note-taxes',
  release: '2025-03-31.basil',
  description:
    '`taxes` → `tax_amounts` on credit note line items, `total_taxes` → `tax_amounts` on credit notes; `amount_excluding_tax`/`unit_amount_excluding_tax` removed from credit note line items.',
  downgrade: {
    credit_note(note) {
      note.tax_amounts = legacyTaxAmounts(note.total_taxes);
      delete note.total_taxes;
    },
    credit_note_line_item(line) {
      line.tax_amounts = legacyTaxAmounts(line.taxes);
      delete line.taxes;
      line.amount_excluding_tax = line.amount ?? null;
      line.unit_amount_excluding_tax = typeof line.unit_amount_decimal === 'string' ? line.unit_amount_decimal : null;
    },
  },
};
