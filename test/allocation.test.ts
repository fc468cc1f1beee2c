/** Unit tests of the discount and credit arithmetic (api/billing/allocation.ts). */
import t from 'tap';
import {
  allocateCredits,
  allocateDiscounts,
  creditOrder,
  creditedShare,
  percentOf,
  percentToBasisPoints,
  splitProportionally,
} from '../api/billing/allocation';

const all = () => true;

t.test('percentages: basis points, rounded half-up once', async (t) => {
  t.equal(percentToBasisPoints('15'), 1500n);
  t.equal(percentToBasisPoints('12.5'), 1250n);
  t.equal(percentToBasisPoints(33.33), 3333n);
  t.throws(() => percentToBasisPoints('1.234'));
  t.throws(() => percentToBasisPoints('-1'));
  t.equal(percentOf(833, 1500n), 125, '124.95 -> 125');
  t.equal(percentOf(10, 2500n), 3, '2.5 -> 3 (half up)');
  t.equal(percentOf(10, 2400n), 2, '2.4 -> 2');
  t.equal(percentOf(0, 10000n), 0);
});

t.test('proportional split by largest remainder adds up exactly', async (t) => {
  t.same(splitProportionally(500, [1000, 333]), [375, 125], 'remainders 125 and 1208: the second line gets the cent');
  t.same(splitProportionally(100, [100, 100, 100]), [34, 33, 33], 'ties go to the earlier line');
  t.same(splitProportionally(0, [5, 5]), [0, 0]);
  t.same(splitProportionally(10, [10, 0]), [10, 0]);
  t.throws(() => splitProportionally(11, [10]), 'never more than the weights');
  // Seeded sweep: the shares always sum to the total and never exceed their weight.
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let k = 0; k < 500; k++) {
    const w = Array.from({ length: 1 + rnd(6) }, () => rnd(5000));
    const sum = w.reduce((a, x) => a + x, 0);
    const total = sum === 0 ? 0 : rnd(sum + 1);
    const s = splitProportionally(total, w);
    if (s.reduce((a, x) => a + x, 0) !== total || s.some((x, i) => x < 0 || x > w[i])) {
      t.fail(`split ${total} over ${w}: ${s}`);
      return;
    }
  }
  t.pass('500 random splits exact');
});

t.test('discounts apply in order, each to what the earlier left', async (t) => {
  const res = allocateDiscounts(
    [1000, 333],
    [true, true],
    [
      { id: 'a', percentOff: null, amountOff: 500, eligible: all },
      { id: 'b', percentOff: '15', amountOff: null, eligible: all },
    ],
  );
  t.same(res, [
    [375, 125],
    [94, 31],
  ]);
  // amount_off larger than what is eligible stops at it; non-discountable and ineligible lines are untouched.
  const capped = allocateDiscounts([300, 200, 50], [true, false, true], [{ id: 'c', percentOff: null, amountOff: 1000, eligible: (i) => i !== 2 }]);
  t.same(capped, [[300, 0, 0]]);
  t.same(allocateDiscounts([999], [true], [{ id: 'd', percentOff: '100', amountOff: null, eligible: all }]), [[999]]);
});

t.test('credits: grant by grant, line by line, exact', async (t) => {
  const res = allocateCredits(
    [400, 300, 100],
    [
      { id: 'g1', balance: 500, eligible: (i) => i !== 2 },
      { id: 'g2', balance: 1000, eligible: all },
    ],
  );
  t.same(res, [
    [400, 100, 0],
    [0, 200, 100],
  ]);
  t.same(allocateCredits([50], [{ id: 'g', balance: 0, eligible: all }]), [[0]]);
});

t.test("credit grants in Stripe's order: priority, expiry, category, effective_at, creation", async (t) => {
  const g = (id: string, priority: number | null, expires_at: number | null, created: number, category = 'paid', effective_at: number | null = null) => ({
    id,
    priority,
    expires_at,
    created,
    category,
    effective_at,
  });
  const sorted = creditOrder([
    g('late', 50, null, 1),
    g('exp2', 50, 200, 5),
    g('exp1', 50, 100, 9),
    g('prio', 10, null, 9),
    g('old', null, null, 0),
    g('promo', 50, null, 7, 'promotional'),
    g('earlyEffective', 50, null, 8, 'paid', -5),
  ]);
  t.same(
    sorted.map((x) => x.id),
    ['prio', 'exp1', 'exp2', 'promo', 'earlyEffective', 'old', 'late'],
  );
});

t.test("credit notes take a line's discount in proportion, exactly over several notes", async (t) => {
  t.equal(creditedShare(100, 1000, 0, 500), 50);
  t.equal(creditedShare(100, 1000, 500, 500), 50);
  // 33 of discount on a line of 100 credited in thirds: 11 + 11 + 11, never 33.33 rounded three times.
  t.same([creditedShare(33, 100, 0, 33), creditedShare(33, 100, 33, 33), creditedShare(33, 100, 66, 34)], [11, 11, 11]);
  t.equal(creditedShare(7, 0, 0, 0), 0);
  let seed = 11;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let k = 0; k < 300; k++) {
    const A = 1 + rnd(10000);
    const E = rnd(A + 1);
    let before = 0;
    let sum = 0;
    while (before < A) {
      const a = 1 + rnd(A - before);
      sum += creditedShare(E, A, before, a);
      before += a;
    }
    if (sum !== E) {
      t.fail(`line ${A}, reduction ${E}: credited ${sum}`);
      return;
    }
  }
  t.pass('300 random sequences of notes credit exactly the line reduction');
});
