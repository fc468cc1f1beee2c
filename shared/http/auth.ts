/**
 * Who is calling. Secret API keys (each key is its own account) authenticate every endpoint except the meter event
 * stream, which takes only short-lived meter event session tokens. Tokens are HMAC-signed and carry their account and
 * expiry, so any gateway process can verify them without a store round trip on the hot path.
 */
import crypto from 'node:crypto';
import type { ApiKeyRecord } from '../state-store';
import { AuthenticationError, SessionExpiredError } from '../errors';
import type { HttpRequest } from './server';

export interface Principal {
  account: string;
  livemode: boolean;
}

const TOKEN_PREFIX = 'mets_';
const SECRET_KEY = /^(sk|rk)_(test|live)_/;

export function accountForKey(secret: string): string {
  return 'acct_' + crypto.createHash('sha256').update(secret).digest('hex').slice(0, 24);
}

function redact(secret: string): string {
  const prefix = secret.startsWith('sk_test_') ? 'sk_test_' : secret.startsWith('sk_live_') ? 'sk_live_' : '';
  return `${prefix}****${secret.slice(-4)}`;
}

/** Reads the credential from `Bearer <key>` or `Basic base64(<key>:)`. */
export function credentialOf(authorization: string): string {
  if (!authorization) {
    throw new AuthenticationError(
      "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
    );
  }
  const space = authorization.indexOf(' ');
  const scheme = space === -1 ? authorization : authorization.slice(0, space);
  const value = space === -1 ? '' : authorization.slice(space + 1).trim();
  if (/^bearer$/i.test(scheme) && value) return value;
  if (/^basic$/i.test(scheme) && value) {
    // Stripe accepts both `Basic <key>` and `Basic base64(<key>:)`.
    if (/^(sk|rk)_(test|live)_/.test(value) || value.startsWith(TOKEN_PREFIX)) return value;
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const user = colon === -1 ? decoded : decoded.slice(0, colon);
    if (user) return user;
  }
  throw new AuthenticationError(
    "Invalid Authorization header: use Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY') or Basic auth with the key as the username.",
  );
}

export interface IssuedSession {
  id: string;
  token: string;
  createdMs: number;
  expiresMs: number;
}

/** A verified meter event session token. */
export interface SessionClaims {
  principal: Principal;
  sessionId: string;
  expiresMs: number;
}

export class Authenticator {
  private readonly keys = new Map<string, Principal>();
  private readonly verified = new Map<string, SessionClaims>();

  constructor(
    keys: ApiKeyRecord[],
    private readonly hmacSecret: Buffer,
    private readonly sessionTtlMs: number,
  ) {
    for (const k of keys) this.addKey(k);
  }

  addKey(k: ApiKeyRecord): void {
    this.keys.set(k.secret, { account: k.account, livemode: k.livemode });
  }

  apiKey(req: HttpRequest): Principal {
    const credential = credentialOf(req.authorization);
    const p = this.keys.get(credential);
    if (p) return p;
    if (credential.startsWith(TOKEN_PREFIX)) {
      throw new AuthenticationError(
        'A meter event session token can only be used with POST /v2/billing/meter_event_stream. Use a secret API key for this endpoint.',
      );
    }
    throw new AuthenticationError(`Invalid API Key provided: ${redact(credential)}`);
  }

  sessionToken(req: Pick<HttpRequest, 'authorization'>, nowMs: number): Principal {
    return this.session(req, nowMs).principal;
  }

  /** The claims of the request's session token; throws the Stripe error for a missing, invalid or expired one. */
  session(req: Pick<HttpRequest, 'authorization'>, nowMs: number): SessionClaims {
    const credential = credentialOf(req.authorization);
    const cached = this.verified.get(credential);
    if (cached) {
      if (cached.expiresMs <= nowMs) throw new SessionExpiredError();
      return cached;
    }
    // Any secret key, known here or not (a gateway thread knows none): the client sent the wrong kind of credential.
    if (this.keys.has(credential) || SECRET_KEY.test(credential)) {
      throw new AuthenticationError(
        'This endpoint takes a meter event session token, not an API key: create a session with POST /v2/billing/meter_event_session and send its authentication_token as the Bearer token.',
      );
    }
    const claims = this.verify(credential);
    if (!claims) throw new AuthenticationError('Invalid meter event session token provided.');
    if (this.verified.size > 10_000) this.verified.clear();
    this.verified.set(credential, claims);
    if (claims.expiresMs <= nowMs) throw new SessionExpiredError();
    return claims;
  }

  issueSession(p: Principal, sessionId: string, nowMs: number): IssuedSession {
    const expiresMs = nowMs + this.sessionTtlMs;
    const payload = Buffer.from(`${sessionId}|${p.account}|${p.livemode ? 1 : 0}|${expiresMs}`).toString('base64url');
    const token = `${TOKEN_PREFIX}${payload}.${this.sign(payload)}`;
    return { id: sessionId, token, createdMs: nowMs, expiresMs };
  }

  private sign(payload: string): string {
    return crypto.createHmac('sha256', this.hmacSecret).update(payload).digest('base64url');
  }

  private verify(token: string): SessionClaims | null {
    if (!token.startsWith(TOKEN_PREFIX)) return null;
    const dot = token.indexOf('.', TOKEN_PREFIX.length);
    if (dot === -1) return null;
    const payload = token.slice(TOKEN_PREFIX.length, dot);
    // Compare the signature's text, not its decoded bytes: base64url's last character carries spare bits, so several
    // spellings decode to the same bytes, and only the canonical one was issued.
    const given = Buffer.from(token.slice(dot + 1));
    const expected = Buffer.from(this.sign(payload));
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
    const parts = Buffer.from(payload, 'base64url').toString('utf8').split('|');
    if (parts.length !== 4) return null;
    const expiresMs = Number(parts[3]);
    if (!Number.isFinite(expiresMs)) return null;
    return { principal: { account: parts[1], livemode: parts[2] === '1' }, sessionId: parts[0], expiresMs };
  }
}
