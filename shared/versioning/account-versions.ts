/**
 * Each account's default API version: fixed when the account is first used (to DEFAULT_API_VERSION, the newest
 * release unless the operator chose another), changed only by the operator (ACCOUNT_API_VERSIONS at start-up). Kept
 * in the state store so every process of the distributed mode agrees; each process caches it for a few seconds.
 */
import type { StateStore } from '../state-store';
import { UniqueViolation } from '../errors';

export const ACCOUNT_SETTINGS_TYPE = 'account_setting';
const API_VERSION_ID = 'api_version';

interface ApiVersionSetting {
  api_version: string;
}

/** The account's default version as stored, or null before its first use. */
export async function readAccountVersion(store: StateStore, account: string): Promise<string | null> {
  const found = await store.getObject<ApiVersionSetting>(account, ACCOUNT_SETTINGS_TYPE, API_VERSION_ID);
  return found?.data.api_version ?? null;
}

export class AccountVersions {
  private readonly cache = new Map<string, { version: string; untilMs: number }>();

  constructor(
    /** The state store every process shares (the versioning layer also reads embedded objects from it). */
    readonly store: StateStore,
    private readonly defaultForNew: string,
    private readonly cacheMs = 5000,
  ) {}

  /** The account's default version, fixing it now on the account's first use. */
  async versionOf(account: string): Promise<string> {
    const now = Date.now();
    const hit = this.cache.get(account);
    if (hit && hit.untilMs > now) return hit.version;
    let version = await readAccountVersion(this.store, account);
    if (version === null) {
      try {
        await this.store.insertObject<ApiVersionSetting>({
          account,
          type: ACCOUNT_SETTINGS_TYPE,
          id: API_VERSION_ID,
          createdMs: now,
          data: { api_version: this.defaultForNew },
        });
        version = this.defaultForNew;
      } catch (err) {
        // Another request (or process) fixed it first: theirs stands.
        if (!(err instanceof UniqueViolation)) throw err;
        version = (await readAccountVersion(this.store, account)) ?? this.defaultForNew;
      }
    }
    if (this.cache.size > 100_000) this.cache.clear();
    this.cache.set(account, { version, untilMs: now + this.cacheMs });
    return version;
  }

  /** The operator's change of an account's default version. */
  async set(account: string, version: string): Promise<void> {
    const data: ApiVersionSetting = { api_version: version };
    try {
      await this.store.transaction(async (tx) => {
        if (!(await tx.updateObject(account, ACCOUNT_SETTINGS_TYPE, API_VERSION_ID, data))) {
          await tx.insertObject({ account, type: ACCOUNT_SETTINGS_TYPE, id: API_VERSION_ID, createdMs: Date.now(), data });
        }
      });
    } catch (err) {
      // Another process (starting with the same setting, or the account's first request) inserted it meanwhile.
      if (!(err instanceof UniqueViolation)) throw err;
      await this.store.updateObject(account, ACCOUNT_SETTINGS_TYPE, API_VERSION_ID, data);
    }
    this.cache.delete(account);
  }
}
