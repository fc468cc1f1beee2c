/**
 * The billing REST layer (first slice): customers, products, prices and plans. Registered by main.ts on API roles.
 */
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import { registerCustomerRoutes } from './customers';
import { registerProductRoutes } from './products';
import { registerPriceRoutes } from './prices';
import { registerPlanRoutes } from './plans';
import { registerEventRoutes } from './events';
import { registerWebhookRoutes } from './webhooks';
import { registerTaxIdRoutes } from './tax-ids';
import { registerBalanceRoutes } from './balance';

export function registerBillingRoutes(http: HttpServer, s: Services): void {
  registerCustomerRoutes(http, s);
  registerProductRoutes(http, s);
  registerPriceRoutes(http, s);
  registerPlanRoutes(http, s);
  registerEventRoutes(http, s);
  registerWebhookRoutes(http, s);
  registerTaxIdRoutes(http, s);
  registerBalanceRoutes(http, s);
}
