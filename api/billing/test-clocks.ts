/**
 * /v1/test_helpers/test_clocks: create, retrieve, list, delete, advance.
 *
 * A customer created with `test_clock` lives at the clock's frozen_time (invoices.timeFor). Advancing runs the billing
 * of the clock's subscriptions and customers synchronously (cycleSubscription per period end passed, then the
 * auto-finalization of drafts whose grace period ended) before the response is sent. The response is the clock as it
 * was when the advance began (status `advancing`, new frozen_time), as Stripe answers; by the time the client reads
 * it again it is `ready`. Events test_helpers.test_clock.advancing / .ready are recorded around the run.
 * Deleting a clock removes the clock only (Stripe also deletes its customers; not done here).
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { recordBillingEvent } from './common';
import { defineResource, loadResource, P } from './resource';
import { TEST_CLOCK_TYPE } from './invoice-model';
import { runClock } from './subscription-cycle';

export interface TestClockObject {
  id: string;
  object: 'test_helpers.test_clock';
  created: number;
  deletes_after: number;
  frozen_time: number;
  livemode: boolean;
  name: string | null;
  status: 'ready' | 'advancing' | 'internal_failure';
  status_details: Record<string, unknown>;
}

/** Stripe deletes test clocks 30 days after creation (not enforced here). */
const DELETES_AFTER = 30 * 86400;

const CLOCKS = { type: TEST_CLOCK_TYPE, noun: 'test clock' };

export function loadClock(store: StateStore, p: Principal, id: string, param = 'id'): Promise<TestClockObject> {
  return loadResource<TestClockObject>(store, p, CLOCKS, id, param);
}

export function registerTestClockRoutes(http: HttpServer, s: Services): void {
  defineResource(http, s, {
    ...CLOCKS,
    path: '/v1/test_helpers/test_clocks',
    events: { created: 'test_helpers.test_clock.created', deleted: 'test_helpers.test_clock.deleted' },
    create: {
      params: { frozen_time: P.integer({ required: true, min: 0 }), name: P.string({ maxLength: 300 }) },
      build: ({ p, now }, v) => {
        if (p.livemode) throw new InvalidRequestError('Test clocks are only available in test mode.');
        return {
          id: newId('clock', p.livemode),
          object: 'test_helpers.test_clock',
          created: now,
          deletes_after: now + DELETES_AFTER,
          frozen_time: v.frozen_time!,
          livemode: p.livemode,
          name: v.name ?? null,
          status: 'ready',
          status_details: {},
        };
      },
    },
    list: { params: {}, filter: () => ({}) },
    remove: {},
  });

  http.route(
    'POST',
    '/v1/test_helpers/test_clocks/:id/advance',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['frozen_time', 'expand']);
      const target = r.integer('frozen_time', { required: true, min: 0 })!;
      const id = req.params[0];
      const snapshot = await s.state.transaction(async (tx) => {
        const clock = await loadClock(tx, p, id);
        if (clock.status !== 'ready') {
          throw new InvalidRequestError(`The test clock ${id} is currently ${clock.status} and cannot be advanced until it is ready.`, {
            code: 'test_clock_not_ready',
          });
        }
        if (target <= clock.frozen_time) {
          throw new InvalidParamError('frozen_time', `The frozen_time must be after the test clock's current frozen_time (${clock.frozen_time}).`);
        }
        clock.status = 'advancing';
        clock.frozen_time = target;
        await tx.updateObject(p.account, TEST_CLOCK_TYPE, id, clock);
        await recordBillingEvent(tx, p, 'test_helpers.test_clock.advancing', clock);
        return { ...clock };
      });
      let failed = false;
      try {
        await runClock(s, p, id, target);
      } catch (err) {
        failed = true;
        throw err;
      } finally {
        await s.state.transaction(async (tx) => {
          const clock = await loadClock(tx, p, id);
          // Back to ready even after a failure: the next advance catches up (each period end is billed once).
          clock.status = 'ready';
          await tx.updateObject(p.account, TEST_CLOCK_TYPE, id, clock);
          if (!failed) await recordBillingEvent(tx, p, 'test_helpers.test_clock.ready', clock);
        });
      }
      return json(200, snapshot);
    }),
  );
}
