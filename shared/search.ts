/**
 * Stripe's Search Query Language (https://docs.stripe.com/search#search-query-language): parsing into an AST and
 * evaluation against stored JSON documents.
 *
 * Grammar (what this parser accepts):
 *
 *   query   := clause ( WS ( 'AND' | 'OR' ) WS clause )*        -- AND and OR cannot be mixed; at most 10 clauses
 *   clause  := [ '-' ] field op value
 *   field   := name ( '.' name )*  |  'metadata' '[' quoted ']'   -- metadata['key'] or metadata["key"]
 *   op      := ':' | '~' | '>' | '<' | '>=' | '<=' | '='
 *   value   := quoted | bare                                     -- quoted: '…' or "…", backslash escapes the quote
 *
 * Semantics (as Stripe documents them):
 *  - `:` is an exact match, case-insensitive for strings; on numeric fields it is numeric equality.
 *  - `~` is a case-insensitive substring match with a value of at least 3 characters (string fields only).
 *  - `>`, `<`, `>=`, `<=`, `=` compare numbers (numeric fields only, e.g. `created`, `amount`).
 *  - `field:null` matches a field that is null or absent (metadata key not set); `-` negates a clause.
 *  - String values must be quoted; numbers and booleans may be quoted or bare; bare `null` is the null literal.
 *  - Unknown fields, operators a field does not support and malformed syntax are InvalidRequestErrors on `query`.
 *
 * Each resource declares its searchable fields with a SearchFields map (name -> kind + getter); evaluation reads the
 * document only through it, so what is searchable is explicit per resource.
 */
import { InvalidRequestError } from './errors';

export type SearchOp = ':' | '~' | '>' | '<' | '>=' | '<=' | '=';

export interface SearchClause {
  field: string;
  /** For `metadata['key']`: the key. */
  metadataKey?: string;
  op: SearchOp;
  /** The literal as written (unquoted and unescaped); null for the bare `null` literal. */
  value: string | null;
  quoted: boolean;
  negated: boolean;
}

export interface SearchQuery {
  combinator: 'AND' | 'OR';
  clauses: SearchClause[];
}

export type SearchFieldKind = 'string' | 'token' | 'number' | 'boolean' | 'metadata';

export interface SearchField<D> {
  /**
   * string: free text (`:` case-insensitive exact, `~` substring); token: ids, enums, codes (`:` only); number:
   * comparisons; boolean: `:` true/false; metadata: `metadata['key']:'value'`.
   */
  kind: SearchFieldKind;
  get(doc: D): unknown;
}

export type SearchFields<D> = Record<string, SearchField<D>>;

export const MAX_CLAUSES = 10;

function syntaxError(message: string): InvalidRequestError {
  return new InvalidRequestError(message, { param: 'query', code: 'parameter_invalid' });
}

const NAME = /[A-Za-z0-9_.]/;

/** Parses a query string into an AST; throws InvalidRequestError (param `query`) on any syntax error. */
export function parseSearchQuery(input: string): SearchQuery {
  const s = input;
  let i = 0;
  const clauses: SearchClause[] = [];
  let combinator: 'AND' | 'OR' | null = null;

  const skipWs = () => {
    while (i < s.length && /\s/.test(s[i])) i++;
  };
  const at = () => (i < s.length ? `at position ${i}` : 'at the end of the query');

  const readQuoted = (): string => {
    const q = s[i];
    i++;
    let out = '';
    while (i < s.length && s[i] !== q) {
      if (s[i] === '\\' && i + 1 < s.length) {
        out += s[i + 1];
        i += 2;
        continue;
      }
      out += s[i++];
    }
    if (i >= s.length) throw syntaxError(`Invalid query: unterminated string starting with ${q}. Close every quoted value with a matching quote.`);
    i++; // closing quote
    return out;
  };

  const readClause = (): SearchClause => {
    skipWs();
    let negated = false;
    if (s[i] === '-') {
      negated = true;
      i++;
    }
    const start = i;
    while (i < s.length && NAME.test(s[i])) i++;
    const field = s.slice(start, i);
    if (field.length === 0) throw syntaxError(`Invalid query: expected a field name ${at()}, e.g. email:"jenny@example.com".`);
    let metadataKey: string | undefined;
    if (s[i] === '[') {
      if (field !== 'metadata') throw syntaxError(`Invalid query: only metadata supports the ['key'] syntax (found ${field}[).`);
      i++;
      if (s[i] !== "'" && s[i] !== '"') throw syntaxError("Invalid query: metadata keys must be quoted, e.g. metadata['order_id']:'6735'.");
      metadataKey = readQuoted();
      if (s[i] !== ']') throw syntaxError(`Invalid query: expected ] after the metadata key ${at()}.`);
      i++;
    } else if (field === 'metadata') {
      throw syntaxError("Invalid query: metadata needs a key, e.g. metadata['order_id']:'6735'.");
    }
    let op: SearchOp;
    if (s.startsWith('>=', i) || s.startsWith('<=', i)) {
      op = s.slice(i, i + 2) as SearchOp;
      i += 2;
    } else if (s[i] === ':' || s[i] === '~' || s[i] === '>' || s[i] === '<' || s[i] === '=') {
      op = s[i] as SearchOp;
      i++;
    } else {
      throw syntaxError(`Invalid query: expected an operator (:, ~, >, <, >=, <=, =) after ${field} ${at()}.`);
    }
    let value: string | null;
    let quoted = false;
    if (s[i] === "'" || s[i] === '"') {
      value = readQuoted();
      quoted = true;
    } else {
      const vs = i;
      while (i < s.length && !/\s/.test(s[i])) i++;
      value = s.slice(vs, i);
      if (value.length === 0) throw syntaxError(`Invalid query: expected a value after ${field}${op} ${at()}.`);
      if (value === 'null') value = null;
    }
    return { field, metadataKey, op, value, quoted, negated };
  };

  skipWs();
  if (i >= s.length) throw syntaxError('Invalid query: the query is empty.');
  clauses.push(readClause());
  for (;;) {
    const before = i;
    skipWs();
    if (i >= s.length) break;
    if (i === before) throw syntaxError(`Invalid query: expected whitespace and AND or OR ${at()}.`);
    const m = /^(AND|OR)\s/.exec(s.slice(i));
    if (!m) throw syntaxError(`Invalid query: expected AND or OR between clauses ${at()}; clauses must be joined explicitly.`);
    const c = m[1] as 'AND' | 'OR';
    if (combinator && combinator !== c) throw syntaxError('Invalid query: AND and OR cannot be combined in the same query.');
    combinator = c;
    i += c.length;
    clauses.push(readClause());
    if (clauses.length > MAX_CLAUSES) throw syntaxError(`Invalid query: a query can have at most ${MAX_CLAUSES} clauses.`);
  }
  return { combinator: combinator ?? 'AND', clauses };
}

function isNullish(v: unknown): boolean {
  return v === null || v === undefined || v === '';
}

/** Checks every clause against the resource's fields (unknown field, unsupported operator, bad literal). */
export function validateSearchQuery<D>(q: SearchQuery, fields: SearchFields<D>, resource: string): void {
  for (const c of q.clauses) {
    const f = fields[c.field];
    if (!f) {
      throw syntaxError(
        `Field \`${c.field}\` is an unsupported search field for resource \`${resource}\`. Supported fields: ${Object.keys(fields).join(', ')}.`,
      );
    }
    if ((f.kind === 'metadata') !== (c.metadataKey !== undefined)) {
      throw syntaxError(`Invalid query: ${c.field} must be written as ${c.field}['key'].`);
    }
    if (c.value === null) {
      if (c.op !== ':') throw syntaxError(`Invalid query: null can only be used with the : operator (${c.field}).`);
      continue;
    }
    switch (f.kind) {
      case 'number':
        if (c.op === '~') throw syntaxError(`Invalid query: the ~ operator is not supported on numeric field \`${c.field}\`.`);
        if (!/^-?\d+(\.\d+)?$/.test(c.value)) throw syntaxError(`Invalid query: \`${c.field}\` is numeric; ${JSON.stringify(c.value)} is not a number.`);
        break;
      case 'boolean':
        if (c.op !== ':') throw syntaxError(`Invalid query: only the : operator is supported on boolean field \`${c.field}\`.`);
        if (c.value !== 'true' && c.value !== 'false') throw syntaxError(`Invalid query: \`${c.field}\` is a boolean; use true or false.`);
        break;
      case 'string':
      case 'token':
      case 'metadata':
        if (c.op !== ':' && !(c.op === '~' && f.kind === 'string')) {
          throw syntaxError(`Invalid query: the ${c.op} operator is not supported on field \`${c.field}\`.`);
        }
        if (!c.quoted) throw syntaxError(`Invalid query: string values must be quoted, e.g. ${c.field}:"${c.value}".`);
        if (c.op === '~' && c.value.length < 3) throw syntaxError('Invalid query: the ~ (substring) operator needs a value of at least 3 characters.');
        break;
    }
  }
}

function clauseMatches<D>(c: SearchClause, f: SearchField<D>, doc: D): boolean {
  let v = f.get(doc);
  if (f.kind === 'metadata') {
    const md = v as Record<string, string> | null | undefined;
    v = md && Object.hasOwn(md, c.metadataKey!) ? md[c.metadataKey!] : undefined;
  }
  if (c.value === null) return isNullish(v);
  if (isNullish(v)) return false;
  switch (f.kind) {
    case 'number': {
      const n = Number(v);
      const want = Number(c.value);
      switch (c.op) {
        case ':':
        case '=':
          return n === want;
        case '>':
          return n > want;
        case '<':
          return n < want;
        case '>=':
          return n >= want;
        case '<=':
          return n <= want;
        default:
          return false;
      }
    }
    case 'boolean':
      return String(v) === c.value;
    default: {
      const have = String(v).toLowerCase();
      const want = c.value.toLowerCase();
      return c.op === '~' ? have.includes(want) : have === want;
    }
  }
}

/** Evaluates a validated query against one document. */
export function matchesSearch<D>(q: SearchQuery, fields: SearchFields<D>, doc: D): boolean {
  const test = (c: SearchClause) => clauseMatches(c, fields[c.field], doc) !== c.negated;
  return q.combinator === 'AND' ? q.clauses.every(test) : q.clauses.some(test);
}

/** parse + validate: the predicate a search endpoint filters with. */
export function compileSearch<D>(input: string, fields: SearchFields<D>, resource: string): (doc: D) => boolean {
  const q = parseSearchQuery(input);
  validateSearchQuery(q, fields, resource);
  return (doc) => matchesSearch(q, fields, doc);
}
