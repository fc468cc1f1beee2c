/** The generator's control plane: a small pool of raw connections (meters, sessions, summaries) and its sessions. */
import { RawConnection, type RawResponse, buildRequest } from '../raw-http';
import type { Options } from './options';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A small pool of raw connections for control-plane requests (sessions, meters, summaries). */
export class Control {
  private idle: RawConnection[] = [];
  private all = new Set<RawConnection>();

  constructor(private readonly o: Options) {}

  async request(method: string, path: string, headers: Record<string, string>, body?: string): Promise<RawResponse> {
    const req = buildRequest(method, path, this.o.api.hostHeader, headers, body);
    for (let attempt = 0; ; attempt++) {
      const reused = this.idle.length > 0;
      const conn = this.idle.pop() ?? this.create();
      try {
        const res = await conn.request(req);
        this.idle.push(conn);
        return res;
      } catch (err) {
        this.idle.push(conn); // reconnects on next use
        // A reused keep-alive connection may have been closed by the server's idle timeout: retry once.
        if (!(reused && attempt === 0)) throw err;
      }
    }
  }

  private create(): RawConnection {
    const c = new RawConnection(this.o.api.host, this.o.api.port);
    this.all.add(c);
    return c;
  }

  close(): void {
    for (const c of this.all) c.close();
    this.all.clear();
    this.idle = [];
  }
}

export function bodyText(res: RawResponse): string {
  const s = res.body.toString('utf8');
  return s.length > 300 ? `${s.slice(0, 300)}...` : s;
}

// ------------------------------------------------------------------------------------------------ sessions

export class Sessions {
  token = '';
  expiresAtMs = 0;
  generation = 0;
  created = 0;
  private inflight: Promise<void> | null = null;

  constructor(
    private readonly o: Options,
    private readonly ctl: Control,
  ) {}

  /** Creates a new session unless `staleGeneration` is given and a newer session already exists. */
  refresh(staleGeneration?: number): Promise<void> {
    if (staleGeneration !== undefined && staleGeneration !== this.generation) return Promise.resolve();
    if (!this.inflight) {
      this.inflight = this.create().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  get refreshing(): boolean {
    return this.inflight !== null;
  }

  private async create(): Promise<void> {
    let lastErr = '';
    for (let attempt = 0; attempt < 20; attempt++) {
      let res: RawResponse;
      try {
        res = await this.ctl.request(
          'POST',
          '/v2/billing/meter_event_session',
          { Authorization: `Bearer ${this.o.key}`, 'Content-Type': 'application/json' },
          '{}',
        );
      } catch (err) {
        lastErr = String(err);
        await sleep(Math.min(100 * 2 ** attempt, 2000));
        continue;
      }
      if (res.status === 200) {
        const j = JSON.parse(res.body.toString('utf8')) as { authentication_token?: string; expires_at?: string | number };
        if (!j.authentication_token) throw new Error(`session response without authentication_token: ${bodyText(res)}`);
        this.token = j.authentication_token;
        const exp = typeof j.expires_at === 'number' ? j.expires_at * (j.expires_at < 1e12 ? 1000 : 1) : j.expires_at ? Date.parse(j.expires_at) : NaN;
        this.expiresAtMs = Number.isFinite(exp) ? exp : Date.now() + 15 * 60_000;
        this.generation++;
        this.created++;
        return;
      }
      lastErr = `${res.status} ${bodyText(res)}`;
      if (res.status === 429 || res.status >= 500) {
        await sleep(Math.min(100 * 2 ** attempt, 2000));
        continue;
      }
      break;
    }
    throw new Error(`cannot create a meter event session: ${lastErr}`);
  }
}

export function sleepUnless(ms: number, cond: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const end = performance.now() + ms;
    const tick = (): void => {
      const left = end - performance.now();
      if (left <= 0 || cond()) resolve();
      else setTimeout(tick, Math.min(left, 100));
    };
    tick();
  });
}

export function retryDelay(attempt: number, retryAfter: string | undefined): number {
  const ra = retryAfter !== undefined ? Number(retryAfter) : NaN;
  const base = Number.isFinite(ra) && ra >= 0 ? Math.min(ra * 1000, 5000) : Math.min(25 * 2 ** attempt, 2000);
  return base * (0.75 + Math.random() * 0.5);
}

/** One connection, one batch in flight. */
