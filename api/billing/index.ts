/**
 * The billing REST layer (first slice): customers, products, prices and plans. Registered by main.ts on API roles.
 */
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import { registerCustomerRoutes } from './customers';
import { registerProductRoutes } from './products';
import { registerPriceRoutes } from './prices';
import { registerPlanRoutes } from './plans';
import { registerTestClockRoutes } from './test-clocks';
import { registerSubscriptionRoutes } from './subscriptions';
import { registerInvoiceRoutes } from './invoices';
import { registerInvoiceItemRoutes } from './invoice-items';
import { registerEventRoutes } from './events';
import { registerWebhookRoutes } from './webhooks';
import { registerTaxIdRoutes } from './tax-ids';
import { registerBalanceRoutes } from './balance';
import { registerCouponRoutes } from './coupons';
import { registerPromotionCodeRoutes } from './promotion-codes';
import { registerDiscountRoutes } from './discounts';
import { registerCreditNoteRoutes } from './credit-notes';
import { registerCreditGrantRoutes } from './credit-grants';
import { deleteSubscriptionDiscounts } from './subscriptions';
import { startBillingTicker, stopBillingTicker } from './billing-tick';
import { registerAlertRoutes } from './alerts';
import { registerCashBalanceRoutes } from './cash-balance';
import { registerPortalRoutes } from './portal';
import { startAlertEvaluator, stopAlertEvaluator } from './alert-evaluator';
import { PRICE_TYPE, renderPrice, type PriceObject } from './prices';
import { renderPlan } from './plans';

/** Stops the billing background jobs (called by main.ts on shutdown, before the store closes). */
export async function stopBillingJobs(): Promise<void> {
  await Promise.all([stopBillingTicker(), stopAlertEvaluator()]);
}

export function registerBillingRoutes(http: HttpServer, s: Services): void {
  // Older API versions embed whole prices and plans where newer ones name them by id.
  s.versioning.setLoader(async (account, type, id) => {
    const found = await s.state.getObject<PriceObject>(account, PRICE_TYPE, id);
    if (!found) return null;
    if (type === 'price') return { ...renderPrice(found.data, []) };
    return found.data.type === 'recurring' ? { ...renderPlan(found.data, []) } : null;
  });
  registerCustomerRoutes(http, s);
  registerProductRoutes(http, s);
  registerPriceRoutes(http, s);
  registerPlanRoutes(http, s);
  registerTestClockRoutes(http, s);
  registerSubscriptionRoutes(http, s);
  registerInvoiceRoutes(http, s);
  registerInvoiceItemRoutes(http, s);
  registerEventRoutes(http, s);
  registerWebhookRoutes(http, s);
  registerTaxIdRoutes(http, s);
  registerBalanceRoutes(http, s);
  registerAlertRoutes(http, s);
  registerCashBalanceRoutes(http, s);
  registerPortalRoutes(http, s);
  registerCouponRoutes(http, s);
  registerPromotionCodeRoutes(http, s);
  registerDiscountRoutes(http, s, { deleteSubscriptionDiscounts });
  registerCreditNoteRoutes(http, s);
  registerCreditGrantRoutes(http, s);
  startBillingTicker(s);
  startAlertEvaluator(s);
}
