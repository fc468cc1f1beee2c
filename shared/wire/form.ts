/**
 * Stripe request parameters: v1 form/query decoding (deepObject brackets), v2 JSON bodies, and ParamReader, the typed
 * getters handlers use to validate parameters with Stripe's error shapes.
 *
 * v1 decoding rules (parseForm / parseQuery):
 *  - split on '&', then on the first '='; a pair without '=' has the empty value, empty pairs and empty keys are skipped;
 *  - '+' is a space, then percent-decoding (UTF-8), for keys and values alike; a malformed escape ("%zz", "%E2%82",
 *    a lone '%') is an InvalidRequestError (400), never a crash;
 *  - brackets are parsed after decoding, so literal `[ ]` (stripe-node, python bodies) and `%5B %5D` (python GET
 *    queries) are the same: `a[b][c]=v` -> {a:{b:{c:'v'}}};
 *  - `a[]=x&a[]=y` -> ['x','y']; with more segments Rack's rule applies: `a[][k]=1&a[][j]=2` -> [{k:'1', j:'2'}], a new
 *    element starts when the last one already has that key;
 *  - indexed keys `a[0]=x&a[1]=y` -> ['x','y']: an object whose keys are all canonical non-negative integers ("0",
 *    "7", not "07") becomes an array in index order (gaps are closed up). An index above 1000 is an error;
 *  - a repeated key (`a=1&a=2`) keeps the LAST value. This is a deliberate simplification (Stripe's own parser may
 *    reject it); no official client sends repeated scalar keys;
 *  - a key used both as a scalar and as a hash/array (`a=1&a[b]=2`), or as both `a[]` and `a[0]`/`a[k]`, is an
 *    InvalidRequestError naming the param;
 *  - `key=` is the empty string, which Stripe clients send for null ("unset"); ParamReader handles it;
 *  - a key that is not `name([seg])*` (e.g. `a[b`, `a[b]c`, `[a]`) is kept as one literal top-level key, which handlers
 *    then reject as an unknown parameter;
 *  - limits: at most 1000 pairs, at most 8 bracket levels, array indexes at most 1000;
 *  - prototype safety: objects have no inherited members (see wire/dict.ts; use `in`, Object.hasOwn or ParamReader, not
 *    `.hasOwnProperty`), and any pair whose key has a `__proto__` segment is dropped. `constructor` and `prototype`
 *    are then ordinary keys: `payload[constructor]=x` is a payload entry and cannot reach any prototype.
 */
import { newDict } from './dict';
import { InvalidParamError, InvalidRequestError, MissingParamError, UnknownParamError } from '../errors';

export type Params = { [key: string]: ParamValue };
export type ParamValue = string | Params | ParamValue[];

export const MAX_PARAMS = 1000;
export const MAX_DEPTH = 8;
export const MAX_ARRAY_INDEX = 1000;

type BuildObj = { [key: string]: BuildNode };
type BuildNode = string | BuildObj | BuildNode[];

const newObj = newDict;

function snippet(s: string, max = 40): string {
  return s.length > max ? s.slice(0, max) + '...' : s;
}

/**
 * '+' -> ' ', then percent-decoding. Throws InvalidRequestError on a malformed escape; for a value, `param` is the
 * (decoded) key. `rawKey` names the parameter in the message.
 */
function decodeComponent(s: string, what: 'name' | 'value', rawKey: string): string {
  let hasPercent = false;
  let hasPlus = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 37) hasPercent = true;
    else if (c === 43) hasPlus = true;
  }
  if (hasPlus) s = s.replace(/\+/g, ' ');
  if (!hasPercent) return s;
  try {
    return decodeURIComponent(s);
  } catch {
    const where = what === 'name' ? `parameter name ${snippet(rawKey)}` : `the value of parameter ${snippet(rawKey)}`;
    throw new InvalidRequestError(
      `Invalid percent-encoding in ${where}: every '%' must start a valid UTF-8 escape such as %20 or %C3%A9.`,
      what === 'value' ? { param: rawKey } : {},
    );
  }
}

/** Bracket notation of the first `n` segments: ['a','b','0'] -> `a[b][0]`. */
function paramName(segs: string[], n: number): string {
  let out = segs[0];
  for (let i = 1; i < n; i++) out += '[' + segs[i] + ']';
  return out;
}

/**
 * Splits a decoded key into segments: `a[b][]` -> ['a','b','']. Returns null when the key is not `name([seg])*`
 * (the caller then keeps it as a literal key). Throws when it is nested deeper than MAX_DEPTH.
 */
function splitKey(key: string): string[] | null {
  const open = key.indexOf('[');
  if (open < 0) return key.indexOf(']') < 0 ? [key] : null;
  if (open === 0) return null;
  const base = key.slice(0, open);
  if (base.indexOf(']') >= 0) return null;
  const segs = [base];
  let i = open;
  while (i < key.length) {
    if (key.charCodeAt(i) !== 91 /* [ */) return null;
    const close = key.indexOf(']', i + 1);
    if (close < 0) return null;
    const seg = key.slice(i + 1, close);
    if (seg.indexOf('[') >= 0) return null;
    segs.push(seg);
    if (segs.length - 1 > MAX_DEPTH) {
      throw new InvalidRequestError(`Parameter ${snippet(key)} is nested too deeply: at most ${MAX_DEPTH} levels of brackets are allowed.`, {
        param: snippet(key, 100),
      });
    }
    i = close + 1;
  }
  return segs;
}

function conflict(segs: string[], n: number): never {
  const param = paramName(segs, n);
  throw new InvalidRequestError(
    `Invalid parameter ${param}: it was sent both as a value and as a hash or array, or both as an array (${param}[]) and a hash (${param}[key]).`,
    { param },
  );
}

function assign(root: BuildObj, segs: string[], value: string): void {
  let cur: BuildObj | BuildNode[] = root;
  const n = segs.length;
  for (let i = 0; i < n; i++) {
    const isLast = i === n - 1;
    if (Array.isArray(cur)) {
      // Arrays are only created for a following '' segment, so segs[i] === '': append.
      if (isLast) {
        cur.push(value);
        return;
      }
      const next = segs[i + 1];
      if (next === '') {
        const child: BuildNode[] = [];
        cur.push(child);
        cur = child;
        continue;
      }
      const lastEl: BuildNode | undefined = cur[cur.length - 1];
      if (lastEl !== undefined && typeof lastEl !== 'string' && !Array.isArray(lastEl) && !(next in lastEl)) {
        cur = lastEl;
      } else {
        const child = newObj<BuildNode>();
        cur.push(child);
        cur = child;
      }
      continue;
    }
    const seg = segs[i];
    const existing: BuildNode | undefined = cur[seg];
    if (isLast) {
      if (existing !== undefined && typeof existing !== 'string') conflict(segs, i + 1);
      cur[seg] = value; // a repeated key: the last value wins
      return;
    }
    const wantArray = segs[i + 1] === '';
    if (existing === undefined) {
      const child: BuildObj | BuildNode[] = wantArray ? [] : newObj<BuildNode>();
      cur[seg] = child;
      cur = child;
    } else if (typeof existing === 'string' || Array.isArray(existing) !== wantArray) {
      conflict(segs, i + 1);
    } else {
      cur = existing;
    }
  }
}

function isIndex(k: string): boolean {
  const n = k.length;
  if (n === 0) return false;
  if (n > 1 && k.charCodeAt(0) === 48) return false;
  for (let i = 0; i < n; i++) {
    const c = k.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/** Turns all-integer-keyed objects into arrays, recursively. `name` is the bracket notation of `node`. */
function finish(node: BuildNode, name: string): ParamValue {
  if (typeof node === 'string') return node;
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) {
      const child = node[i];
      if (typeof child !== 'string') node[i] = finish(child, `${name}[${i}]`) as BuildNode;
    }
    return node as ParamValue[];
  }
  const keys = Object.keys(node);
  let allIndexes = keys.length > 0 && name !== ''; // the top level ('') always stays a hash
  for (const k of keys) {
    if (!isIndex(k)) {
      allIndexes = false;
      break;
    }
  }
  if (allIndexes) {
    for (const k of keys) {
      if (k.length > 4 || Number(k) > MAX_ARRAY_INDEX) {
        const p = `${name}[${snippet(k, 20)}]`;
        throw new InvalidRequestError(`Invalid array index in ${p}: array indexes must be at most ${MAX_ARRAY_INDEX}.`, {
          param: p,
        });
      }
    }
    const idx = keys.map(Number).sort((a, b) => a - b);
    return idx.map((i) => finish(node[String(i)], `${name}[${i}]`));
  }
  // Rewrite in place: strings stay as they are, containers are replaced by their finished form.
  for (const k of keys) {
    const child = node[k];
    if (typeof child !== 'string') node[k] = finish(child, name === '' ? k : `${name}[${k}]`) as BuildNode;
  }
  return node as Params;
}

/** Decodes an application/x-www-form-urlencoded body with Stripe's v1 conventions (see the file comment). */
export function parseForm(body: string | Buffer): Params {
  const s = typeof body === 'string' ? body : body.toString('utf8');
  const root = newObj<BuildNode>();
  if (s.length === 0) return root as Params;
  let count = 0;
  let start = 0;
  while (start <= s.length) {
    let end = s.indexOf('&', start);
    if (end < 0) end = s.length;
    if (end > start) {
      if (++count > MAX_PARAMS) {
        throw new InvalidRequestError(`Too many parameters: a request can have at most ${MAX_PARAMS} parameters.`);
      }
      const eq = s.indexOf('=', start);
      const hasEq = eq >= 0 && eq < end;
      const rawKey = s.slice(start, hasEq ? eq : end);
      const rawValue = hasEq ? s.slice(eq + 1, end) : '';
      const key = decodeComponent(rawKey, 'name', rawKey);
      const value = decodeComponent(rawValue, 'value', key);
      if (key.length > 0) {
        const segs = splitKey(key) ?? [key];
        if (segs.indexOf('__proto__') < 0) assign(root, segs, value);
      }
    }
    start = end + 1;
  }
  return finish(root, '') as Params;
}

/** Decodes a URL query string (without or with its leading '?') with the same rules as parseForm. */
export function parseQuery(qs: string): Params {
  return parseForm(qs.length > 0 && qs.charCodeAt(0) === 63 /* ? */ ? qs.slice(1) : qs);
}

/**
 * Parses a v2 JSON body. An empty (or all-whitespace) body is `{}`. Bad JSON and a top level that is not an object
 * are InvalidRequestErrors. JSON.parse cannot pollute prototypes (`"__proto__"` becomes an own key), and ParamReader
 * only reads own keys, so such a key is reported as an unknown parameter.
 */
export function parseJsonBody(body: Buffer | string): Record<string, unknown> {
  const s = typeof body === 'string' ? body : body.toString('utf8');
  if (s.trim().length === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch {
    throw new InvalidRequestError('Invalid JSON body: the request body could not be parsed as JSON.');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new InvalidRequestError('Invalid JSON body: the top level must be a JSON object.');
  }
  return v as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------------------------------
// ParamReader

export interface StringOptions {
  required?: boolean;
  maxLength?: number;
  enum?: readonly string[];
  /**
   * Return '' for `key=` (stripe-node's encoding of null: "unset") instead of rejecting it with Stripe's empty-string
   * error; '' then skips the enum and maxLength checks. Use it for nullable params such as `event_time_window`.
   */
  allowEmpty?: boolean;
}
export interface IntegerOptions {
  required?: boolean;
  min?: number;
  max?: number;
}
export interface PresenceOptions {
  required?: boolean;
}
export interface StringMapOptions {
  required?: boolean;
  maxValueLength?: number;
  maxKeyLength?: number;
  maxKeys?: number;
}
export interface ArrayOptions {
  required?: boolean;
  maxItems?: number;
}

type Required = { required: true };

const hasOwn = Object.prototype.hasOwnProperty;

/** Stripe's list phrasing: "a", "a or b", "a, b, or c". */
function oneOf(values: readonly string[]): string {
  if (values.length <= 1) return values.join('');
  if (values.length === 2) return `${values[0]} or ${values[1]}`;
  return `${values.slice(0, -1).join(', ')}, or ${values[values.length - 1]}`;
}

function show(v: unknown): string {
  let s: string;
  if (typeof v === 'string') s = v;
  else {
    try {
      s = JSON.stringify(v) ?? String(v);
    } catch {
      s = String(v);
    }
  }
  return snippet(s, 40);
}

function isPlainParams(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Typed, Stripe-style access to one level of parameters. Errors carry `param` in Stripe's nested notation
 * (`default_aggregation[formula]`). Works on parseForm results (strings) and on JSON bodies (numbers, booleans, null:
 * null is treated like an absent value).
 *
 * Empty strings: Stripe clients send null as `key=`, meaning "unset". string() rejects '' with Stripe's "You passed an
 * empty string" error unless allowEmpty; the other getters treat '' as absent (then MissingParamError if required).
 * isUnset(name) tells handlers of update endpoints whether a param was explicitly unset.
 */
export class ParamReader {
  readonly params: Record<string, unknown>;
  readonly prefix: string;

  constructor(params: Record<string, unknown> | Params, prefix = '') {
    this.params = params as Record<string, unknown>;
    this.prefix = prefix;
  }

  /** Full param name in Stripe's nested notation. */
  param(name: string): string {
    return this.prefix === '' ? name : `${this.prefix}[${name}]`;
  }

  /** The raw own value, or undefined (JSON null is undefined too). */
  raw(name: string): unknown {
    if (!hasOwn.call(this.params, name)) return undefined;
    const v = this.params[name];
    return v === null ? undefined : v;
  }

  /** True when the param is present (even as '' or JSON null). */
  has(name: string): boolean {
    return hasOwn.call(this.params, name);
  }

  /** True when the param was sent as '' (v1 null) or JSON null: an explicit "unset". */
  isUnset(name: string): boolean {
    if (!hasOwn.call(this.params, name)) return false;
    const v = this.params[name];
    return v === '' || v === null;
  }

  keys(): string[] {
    return Object.keys(this.params);
  }

  private emptyError(name: string): InvalidParamError {
    const p = this.param(name);
    return new InvalidParamError(
      p,
      `You passed an empty string for '${p}'. We assume empty values are an attempt to unset a parameter; however '${p}' cannot be unset. You should remove '${p}' from your request or supply a non-empty value.`,
      'parameter_invalid_empty',
    );
  }

  string(name: string, opts: StringOptions & Required): string;
  string(name: string, opts?: StringOptions): string | undefined;
  string(name: string, opts: StringOptions = {}): string | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined) {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    if (typeof v !== 'string') throw new InvalidParamError(p, `Invalid string: ${show(v)}`, 'parameter_invalid_string');
    if (v === '') {
      if (!opts.allowEmpty) throw this.emptyError(name);
      return ''; // an explicit "unset": enum and length rules do not apply
    }
    if (opts.enum && !opts.enum.includes(v)) {
      throw new InvalidParamError(p, `Invalid ${p}: must be one of ${oneOf(opts.enum)}`);
    }
    if (opts.maxLength !== undefined && v.length > opts.maxLength) {
      throw new InvalidParamError(p, `Invalid string: ${v.slice(0, 20)}...; must be at most ${opts.maxLength} characters`, 'parameter_invalid_string_too_long');
    }
    return v;
  }

  /** Accepts decimal digit strings with an optional '-' ("10", "-5") and, for JSON, integral numbers. */
  integer(name: string, opts: IntegerOptions & Required): number;
  integer(name: string, opts?: IntegerOptions): number | undefined;
  integer(name: string, opts: IntegerOptions = {}): number | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    let n: number;
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v)) throw new InvalidParamError(p, `Invalid integer: ${show(v)}`, 'parameter_invalid_integer');
      n = v;
    } else if (typeof v === 'string' && isIntegerString(v)) {
      n = Number(v);
      if (!Number.isSafeInteger(n)) throw new InvalidParamError(p, `Invalid integer: ${show(v)}`, 'parameter_invalid_integer');
    } else {
      throw new InvalidParamError(p, `Invalid integer: ${show(v)}`, 'parameter_invalid_integer');
    }
    if (opts.min !== undefined && n < opts.min) {
      throw new InvalidParamError(p, `This value must be greater than or equal to ${opts.min}.`);
    }
    if (opts.max !== undefined && n > opts.max) {
      throw new InvalidParamError(p, `This value must be less than or equal to ${opts.max}.`);
    }
    return n;
  }

  /** Accepts 'true'/'false' and, for JSON, booleans. */
  boolean(name: string, opts: PresenceOptions & Required): boolean;
  boolean(name: string, opts?: PresenceOptions): boolean | undefined;
  boolean(name: string, opts: PresenceOptions = {}): boolean | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    if (v === true || v === 'true') return true;
    if (v === false || v === 'false') return false;
    throw new InvalidParamError(p, `Invalid boolean: ${show(v)}`, 'parameter_invalid_boolean');
  }

  /** A nested hash as a reader whose prefix is this param. */
  object(name: string, opts: PresenceOptions & Required): ParamReader;
  object(name: string, opts?: PresenceOptions): ParamReader | undefined;
  object(name: string, opts: PresenceOptions = {}): ParamReader | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    if (!isPlainParams(v)) throw new InvalidParamError(p, `Invalid object: ${show(v)}`, 'parameter_invalid_object');
    return new ParamReader(v, p);
  }

  /**
   * A hash of strings (metadata, payload), as a prototype-less object. An all-integer-keyed hash that parseForm turned
   * into an array is turned back into "0", "1", ... keys. Values must be strings (JSON numbers are rejected).
   */
  stringMap(name: string, opts: StringMapOptions & Required): Record<string, string>;
  stringMap(name: string, opts?: StringMapOptions): Record<string, string> | undefined;
  stringMap(name: string, opts: StringMapOptions = {}): Record<string, string> | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    let entries: [string, unknown][];
    if (Array.isArray(v)) entries = v.map((x, i) => [String(i), x]);
    else if (isPlainParams(v)) entries = Object.keys(v).map((k) => [k, v[k]]);
    else throw new InvalidParamError(p, `Invalid object: ${show(v)}`, 'parameter_invalid_object');
    if (opts.maxKeys !== undefined && entries.length > opts.maxKeys) {
      throw new InvalidParamError(p, `Invalid ${p}: must have at most ${opts.maxKeys} keys`);
    }
    const out = newObj<string>();
    for (const [k, x] of entries) {
      const kp = `${p}[${k}]`;
      if (typeof x !== 'string') throw new InvalidParamError(kp, `Invalid string: ${show(x)}`, 'parameter_invalid_string');
      if (opts.maxKeyLength !== undefined && k.length > opts.maxKeyLength) {
        throw new InvalidParamError(kp, `Invalid ${p}: keys must be at most ${opts.maxKeyLength} characters; ${k.slice(0, 20)}... is too long`);
      }
      if (opts.maxValueLength !== undefined && x.length > opts.maxValueLength) {
        throw new InvalidParamError(
          kp,
          `Invalid string: ${x.slice(0, 20)}...; must be at most ${opts.maxValueLength} characters`,
          'parameter_invalid_string_too_long',
        );
      }
      out[k] = x;
    }
    return out;
  }

  /** An array of strings (`expand[]=a`, `expand[0]=a`, JSON array); a single string is a one-element array. */
  stringArray(name: string, opts: ArrayOptions & Required): string[];
  stringArray(name: string, opts?: ArrayOptions): string[] | undefined;
  stringArray(name: string, opts: ArrayOptions = {}): string[] | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    const arr = typeof v === 'string' ? [v] : v;
    if (!Array.isArray(arr)) throw new InvalidParamError(p, `Invalid array: ${show(v)}`, 'parameter_invalid_array');
    if (opts.maxItems !== undefined && arr.length > opts.maxItems) {
      throw new InvalidParamError(p, `Invalid ${p}: must have at most ${opts.maxItems} elements`);
    }
    for (let i = 0; i < arr.length; i++) {
      if (typeof arr[i] !== 'string') {
        throw new InvalidParamError(`${p}[${i}]`, `Invalid string: ${show(arr[i])}`, 'parameter_invalid_string');
      }
    }
    return arr as string[];
  }

  /** An array of hashes (`items[0][price]=…`, v2 `events: [...]`) as readers prefixed `name[i]`. */
  objectArray(name: string, opts: ArrayOptions & Required): ParamReader[];
  objectArray(name: string, opts?: ArrayOptions): ParamReader[] | undefined;
  objectArray(name: string, opts: ArrayOptions = {}): ParamReader[] | undefined {
    const v = this.raw(name);
    const p = this.param(name);
    if (v === undefined || v === '') {
      if (opts.required) throw new MissingParamError(p);
      return undefined;
    }
    if (!Array.isArray(v)) throw new InvalidParamError(p, `Invalid array: ${show(v)}`, 'parameter_invalid_array');
    if (opts.maxItems !== undefined && v.length > opts.maxItems) {
      throw new InvalidParamError(p, `Invalid ${p}: must have at most ${opts.maxItems} elements`);
    }
    return v.map((x, i) => {
      const ip = `${p}[${i}]`;
      if (!isPlainParams(x)) throw new InvalidParamError(ip, `Invalid object: ${show(x)}`, 'parameter_invalid_object');
      return new ParamReader(x, ip);
    });
  }

  /** Throws UnknownParamError for the first own key not in `allowed` (v1 handlers include 'expand'). */
  assertNoUnknown(allowed: readonly string[]): void {
    for (const k of Object.keys(this.params)) {
      if (!allowed.includes(k)) throw new UnknownParamError(this.param(k));
    }
  }
}

function isIntegerString(s: string): boolean {
  let i = s.charCodeAt(0) === 45 /* - */ ? 1 : 0;
  if (i === s.length) return false;
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}
