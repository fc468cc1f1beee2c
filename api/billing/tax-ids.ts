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
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { defineResource, P, type ParamValues, type ResourceContext } from './resource';
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

const TAX_IDS = {
  type: TAX_ID_TYPE,
  noun: 'tax_id',
  events: {
    created: (t: TaxIdObject) => (t.customer ? 'customer.tax_id.created' : 'tax_id.created'),
    deleted: (t: TaxIdObject) => (t.customer ? 'customer.tax_id.deleted' : 'tax_id.deleted'),
  },
};

const VALUE_PARAMS = { type: P.string({ required: true, maxLength: 100 }), value: P.string({ required: true, maxLength: 5000 }) };

/** A new tax ID of `owner`; its customer must exist (`customerParam` names it in the 404). */
async function newTaxId(
  { p, tx, now }: ResourceContext,
  v: ParamValues<typeof VALUE_PARAMS>,
  owner: TaxIdObject['owner'],
  customerParam: string,
): Promise<TaxIdObject> {
  const type = v.type!;
  const { value, country } = checkTaxId(type, v.value!);
  if (owner.customer) await loadCustomer(tx, p, owner.customer, customerParam);
  return {
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
}

/** `owner` of the account-level API: self when not sent. */
const OWNER = P.custom((r, n) => {
  const o = r.object(n);
  if (!o) return undefined;
  o.assertNoUnknown(['type', 'account', 'customer', 'customer_account']);
  const type = o.string('type', { required: true, enum: ['account', 'application', 'customer', 'self'] });
  if (type === 'customer') return { customer: o.string('customer', { required: true, maxLength: 5000 }), customer_account: null, type };
  if (type === 'account') return { account: o.string('account', { required: true, maxLength: 5000 }), customer_account: null, type };
  return { customer_account: null, type };
});

function ownerOf(p: Principal, sent: TaxIdObject['owner'] | undefined): TaxIdObject['owner'] {
  if (!sent) return { customer_account: null, type: 'self' };
  return sent.type === 'application' ? { application: p.account, customer_account: null, type: 'application' } : sent;
}

export function registerTaxIdRoutes(http: HttpServer, s: Services): void {
  // A customer's tax IDs: the same objects, scoped to the customer named in the path.
  defineResource(http, s, {
    ...TAX_IDS,
    path: '/v1/customers/:customer/tax_ids',
    scope: (t, [customer]) => t.customer === customer,
    create: {
      params: VALUE_PARAMS,
      build: (ctx, v) => newTaxId(ctx, v, { customer: ctx.parent[0], customer_account: null, type: 'customer' }, 'customer'),
    },
    list: {
      params: {},
      filter: async (_v, { s, p, parent: [customer] }) => {
        await loadCustomer(s.state, p, customer, 'customer');
        return { where: { customer } };
      },
    },
    remove: {},
  });

  defineResource(http, s, {
    ...TAX_IDS,
    path: '/v1/tax_ids',
    create: {
      params: { ...VALUE_PARAMS, owner: OWNER },
      build: (ctx, v) => newTaxId(ctx, v, ownerOf(ctx.p, v.owner), v.owner?.type === 'customer' ? 'owner[customer]' : 'customer'),
    },
    list: {
      params: { owner: OWNER },
      filter: (v, { p }) => {
        const owner = ownerOf(p, v.owner);
        return {
          pred: (t) =>
            t.owner.type === owner.type &&
            (owner.type !== 'customer' || t.owner.customer === owner.customer) &&
            (owner.type !== 'account' || t.owner.account === owner.account),
        };
      },
    },
    remove: {},
  });
}
