import { idOf, isObject, type VersionChange } from '../change';

/**
 * 2025-03-31.basil replaced a credit note's single `refund` with a `refunds` array
 * (docs.stripe.com/changelog/basil/2025-03-31/add-support-for-multiple-partial-payments-on-invoices; stripe-node
 * 18.0.0: "Remove support for refund on CreditNote"). meterd emulates no charges, so a note never has refunds: the
 * older shape's `refund` is null. (An older request's `refund` parameter is refused, as `refunds` is.)
 */
export const creditNoteRefunds: VersionChange = {
  id: 'credit-note-refunds',
  release: '2025-03-31.basil',
  description: "a credit note's `refund` (one refund) becomes `refunds` (a list).",
  downgrade: {
    credit_note(note) {
      const refunds = Array.isArray(note.refunds) ? note.refunds : [];
      const first: unknown = refunds[0];
      note.refund = isObject(first) ? idOf(first.refund) : null;
      delete note.refunds;
    },
  },
};
