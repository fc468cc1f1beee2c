/**
 * Tax IDs: a customer's (`/v1/customers/:customer/tax_ids`) and the account-level API (`/v1/tax_ids` with
 * `owner[type]` account | application | customer | self). One stored type `tax_id` for both; a customer's tax ID is
 * also visible through /v1/tax_ids with owner[type]=customer.
 *
 * Values are checked for the common types with the formats Stripe documents (whitespace ignored); the other types
 * only need a non-empty value. A bad value gets Stripe's error: 400, code tax_id_invalid, param value. `country` comes
 * from the type (eu_vat: from the value's prefix, EL → GR, XI → GB). Verification is `pending` for the types Stripe
 * verifies (eu_vat, gb_vat, au_abn, ...) and `unavailable` otherwise.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { listEndpoint, nowSeconds, recordBillingEvent } from './common';
import { loadCustomer } from './customers';

export const TAX_ID_TYPE = 'tax_id';

/** Stripe's creatable tax ID types (stripe@23.1.0 TaxIds.d.ts, without 'unknown'). */
export const TAX_ID_TYPES: readonly string[] = [
  'ad_nrt',
  'ae_trn',
  'al_tin',
  'am_tin',
  'ao_tin',
  'ar_cuit',
  'au_abn',
  'au_acn',
  'au_arn',
  'au_wpn',
  'aw_tin',
  'az_tin',
  'ba_tin',
  'bb_tin',
  'bd_bin',
  'bf_ifu',
  'bg_uic',
  'bh_vat',
  'bj_ifu',
  'bo_tin',
  'br_cnpj',
  'br_cpf',
  'bs_tin',
  'bw_vat',
  'by_tin',
  'ca_bn',
  'ca_gst_hst',
  'ca_pst_bc',
  'ca_pst_mb',
  'ca_pst_sk',
  'ca_qst',
  'cd_nif',
  'ch_uid',
  'ch_vat',
  'ci_vat',
  'cl_tin',
  'cm_niu',
  'cn_tin',
  'co_nit',
  'cr_tin',
  'cv_nif',
  'cz_dic',
  'de_stn',
  'do_rcn',
  'ec_ruc',
  'eg_tin',
  'es_cif',
  'et_tin',
  'eu_oss_vat',
  'eu_vat',
  'fo_vat',
  'fr_siren',
  'fr_siret',
  'fr_spi',
  'gb_vat',
  'ge_vat',
  'gh_tin',
  'gi_tin',
  'gn_nif',
  'hk_br',
  'hr_oib',
  'hu_tin',
  'ic_nif',
  'id_npwp',
  'il_vat',
  'in_gst',
  'is_kt',
  'is_vat',
  'it_cf',
  'jp_cn',
  'jp_rn',
  'jp_trn',
  'ke_pin',
  'kg_tin',
  'kh_tin',
  'kr_brn',
  'kz_bin',
  'la_tin',
  'li_uid',
  'li_vat',
  'lk_vat',
  'ma_vat',
  'md_cf',
  'md_vat',
  'me_pib',
  'mk_vat',
  'mr_nif',
  'mu_vat',
  'mx_rfc',
  'my_frp',
  'my_itn',
  'my_sst',
  'mz_nuit',
  'ng_tin',
  'no_vat',
  'no_voec',
  'np_pan',
  'nz_bn',
  'nz_gst',
  'om_vat',
  'pe_ruc',
  'ph_tin',
  'pl_nip',
  'pt_nif',
  'py_ruc',
  'ro_tin',
  'rs_pib',
  'ru_inn',
  'ru_kpp',
  'sa_vat',
  'sg_gst',
  'sg_uen',
  'si_tin',
  'sm_coe',
  'sn_ninea',
  'sr_fin',
  'sv_nit',
  'th_vat',
  'tj_tin',
  'tr_tin',
  'tt_bir',
  'tt_vat',
  'tw_vat',
  'tz_vat',
  'ua_vat',
  'ug_tin',
  'us_ein',
  'uy_ruc',
  'uz_tin',
  'uz_vat',
  've_rif',
  'vn_tin',
  'za_vat',
  'zm_tin',
  'zw_tin',
];

const EU = 'AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI';

/** Formats (applied to the value with whitespace removed, uppercased). */
const FORMATS: Record<string, RegExp> = {
  eu_vat: new RegExp(`^(${EU})[0-9A-Z]{2,13}$`),
  gb_vat: /^GB(\d{9}|\d{12})$/,
  us_ein: /^\d{2}-?\d{7}$/,
  au_abn: /^\d{11}$/,
  au_arn: /^\d{12}$/,
  in_gst: /^\d{2}[A-Z]{5}\d{4}[A-Z][1-9A-Z]Z[0-9A-Z]$/,
  ca_bn: /^\d{9}$/,
  ca_gst_hst: /^\d{9}RT\d{4}$/,
  ca_qst: /^\d{10}TQ\d{4}$/,
  ch_vat: /^CHE-?\d{3}\.?\d{3}\.?\d{3}(MWST|TVA|IVA)$/,
  ch_uid: /^CHE-?\d{3}\.?\d{3}\.?\d{3}$/,
  jp_cn: /^\d{13}$/,
  jp_rn: /^\d{5}$/,
  jp_trn: /^T\d{13}$/,
  no_vat: /^\d{9}MVA$/,
  nz_gst: /^(\d{8,9}|\d{2,3}-\d{3}-\d{3})$/,
  br_cnpj: /^\d{2}\.\d{3}\.\d{3}\/\d{4}-\d{2}$/,
  br_cpf: /^\d{3}\.\d{3}\.\d{3}-\d{2}$/,
  sg_gst: /^M\d{8}[0-9A-Z]$/,
  sg_uen: /^[0-9A-Z]{9,10}$/,
  za_vat: /^4\d{9}$/,
  mx_rfc: /^[A-ZÑ&]{3,4}\d{6}[0-9A-Z]{3}$/,
  kr_brn: /^\d{3}-\d{2}-\d{5}$/,
  hk_br: /^\d{8}$/,
  es_cif: /^[A-Z]\d{8}$/,
  il_vat: /^\d{9}$/,
  th_vat: /^\d{13}$/,
  tw_vat: /^\d{8}$/,
  ae_trn: /^\d{15}$/,
  sa_vat: /^\d{15}$/,
};

/** Types Stripe verifies (with a government database): verification starts `pending`. */
const VERIFIED_TYPES = new Set(['eu_vat', 'gb_vat', 'au_abn', 'in_gst', 'no_vat', 'ch_vat']);

interface TaxIdObject {
  id: string;
  object: 'tax_id';
  country: string | null;
  created: number;
  customer: string | null;
  customer_account: null;
  livemode: boolean;
  owner: { account?: string; application?: string; customer?: string; customer_account: null; type: string };
  type: string;
  value: string;
  verification: { status: 'pending' | 'unavailable'; verified_address: null; verified_name: null };
}

function countryOf(type: string, normalized: string): string | null {
  if (type === 'eu_vat') {
    const cc = normalized.slice(0, 2);
    return cc === 'EL' ? 'GR' : cc === 'XI' ? 'GB' : cc;
  }
  if (type === 'eu_oss_vat') return null;
  return type.slice(0, 2).toUpperCase();
}

/** Validates type and value; returns the value as stored (trimmed). */
export function checkTaxId(type: string, value: string): { value: string; country: string | null } {
  if (!TAX_ID_TYPES.includes(type)) {
    throw new InvalidParamError('type', `Invalid tax_id type: ${type}. Must be one of ${TAX_ID_TYPES.join(', ')}.`, 'parameter_invalid');
  }
  const trimmed = value.trim();
  const normalized = trimmed.replace(/\s+/g, '').toUpperCase();
  const fmt = FORMATS[type];
  if (normalized.length === 0 || (fmt && !fmt.test(normalized))) {
    throw new InvalidRequestError(`Invalid value for ${type}.`, { code: 'tax_id_invalid', param: 'value' });
  }
  return { value: trimmed, country: countryOf(type, normalized) };
}

async function createTaxId(s: Services, p: Principal, r: ParamReader, owner: TaxIdObject['owner']): Promise<TaxIdObject> {
  const type = r.string('type', { required: true, maxLength: 100 })!;
  const rawValue = r.string('value', { required: true, maxLength: 5000 })!;
  const { value, country } = checkTaxId(type, rawValue);
  const { nowMs, now } = nowSeconds(s);
  const t: TaxIdObject = {
    id: newId('txi', p.livemode),
    object: 'tax_id',
    country,
    created: now,
    customer: owner.customer ?? null,
    customer_account: null,
    livemode: p.livemode,
    owner,
    type,
    value,
    verification: { status: VERIFIED_TYPES.has(type) ? 'pending' : 'unavailable', verified_address: null, verified_name: null },
  };
  await s.state.transaction(async (tx) => {
    if (owner.customer) await loadCustomer(tx, p, owner.customer, owner.type === 'customer' && r.has('owner') ? 'owner[customer]' : 'customer');
    await tx.insertObject({ account: p.account, type: TAX_ID_TYPE, id: t.id, createdMs: nowMs, data: t });
    await recordBillingEvent(tx, p, t.customer ? 'customer.tax_id.created' : 'tax_id.created', t);
  });
  return t;
}

async function loadTaxId(store: StateStore, p: Principal, id: string, customer?: string): Promise<TaxIdObject> {
  const found = await store.getObject<TaxIdObject>(p.account, TAX_ID_TYPE, id);
  if (!found || (customer !== undefined && found.data.customer !== customer)) throw new NotFoundError(`No such tax_id: '${id}'`);
  return found.data;
}

async function deleteTaxId(s: Services, p: Principal, id: string, customer?: string) {
  await s.state.transaction(async (tx) => {
    const t = await loadTaxId(tx, p, id, customer);
    await tx.deleteObject(p.account, TAX_ID_TYPE, t.id);
    await recordBillingEvent(tx, p, t.customer ? 'customer.tax_id.deleted' : 'tax_id.deleted', t);
  });
  return json(200, { id, object: 'tax_id', deleted: true });
}

function readOwner(r: ParamReader, p: Principal): TaxIdObject['owner'] {
  const o = r.object('owner');
  if (!o) return { customer_account: null, type: 'self' };
  o.assertNoUnknown(['type', 'account', 'customer', 'customer_account']);
  const type = o.string('type', { required: true, enum: ['account', 'application', 'customer', 'self'] })!;
  if (type === 'customer') {
    const customer = o.string('customer', { required: true, maxLength: 5000 })!;
    return { customer, customer_account: null, type };
  }
  if (type === 'account') {
    const account = o.string('account', { required: true, maxLength: 5000 })!;
    return { account, customer_account: null, type };
  }
  if (type === 'application') return { application: p.account, customer_account: null, type };
  return { customer_account: null, type };
}

export function registerTaxIdRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/customers/:customer/tax_ids',
    apiEndpoint(s, async (p, req, params: Params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['type', 'value', 'expand']);
      return json(200, await createTaxId(s, p, r, { customer: req.params[0], customer_account: null, type: 'customer' }));
    }),
  );
  http.route(
    'GET',
    '/v1/customers/:customer/tax_ids',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'expand']);
      const page = readListParams(r);
      const customer = req.params[0];
      await loadCustomer(s.state, p, customer, 'customer');
      return listEndpoint<TaxIdObject>(s, p, `/v1/customers/${customer}/tax_ids`, TAX_ID_TYPE, page, { where: { customer } }, undefined, (t) => t);
    }),
  );
  http.route(
    'GET',
    '/v1/customers/:customer/tax_ids/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadTaxId(s.state, p, req.params[1], req.params[0]));
    }),
  );
  http.route(
    'DELETE',
    '/v1/customers/:customer/tax_ids/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return deleteTaxId(s, p, req.params[1], req.params[0]);
    }),
  );

  http.route(
    'POST',
    '/v1/tax_ids',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['type', 'value', 'owner', 'expand']);
      return json(200, await createTaxId(s, p, r, readOwner(r, p)));
    }),
  );
  http.route(
    'GET',
    '/v1/tax_ids',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'owner', 'expand']);
      const page = readListParams(r);
      const owner = readOwner(r, p);
      const pred = (t: TaxIdObject) =>
        t.owner.type === owner.type &&
        (owner.type !== 'customer' || t.owner.customer === owner.customer) &&
        (owner.type !== 'account' || t.owner.account === owner.account);
      return listEndpoint<TaxIdObject>(s, p, '/v1/tax_ids', TAX_ID_TYPE, page, {}, pred, (t) => t);
    }),
  );
  http.route(
    'GET',
    '/v1/tax_ids/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadTaxId(s.state, p, req.params[0]));
    }),
  );
  http.route(
    'DELETE',
    '/v1/tax_ids/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return deleteTaxId(s, p, req.params[0]);
    }),
  );
}
