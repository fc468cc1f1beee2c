/** Tiny CLI/env option reader shared by the bench scripts (no dependencies). */

export class Args {
  private readonly values = new Map<string, string>();
  /** Every value of a repeated `--name value` flag, in order. */
  private readonly repeated = new Map<string, string[]>();
  private readonly flags = new Set<string>();

  /**
   * `booleans` are flags that take no value (`--null`, `--chart`, `--no-probe`); with `known`, any other flag is an
   * error (a typo must not silently run a different benchmark).
   */
  constructor(argv: string[], booleans: string[] = [], known?: string[]) {
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i]!;
      if (!a.startsWith('--')) throw new Error(`unexpected argument "${a}"`);
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (known && !known.includes(name)) throw new Error(`unknown option --${name}`);
      if (eq > 0 && booleans.includes(name) && !/^(1|0|true|false)$/i.test(a.slice(eq + 1))) {
        throw new Error(`--${name} takes no value (or =true / =false)`);
      }
      let v: string;
      if (eq > 0) v = a.slice(eq + 1);
      else if (booleans.includes(name)) {
        this.flags.add(name);
        continue;
      } else {
        const next = argv[i + 1];
        if (next === undefined) throw new Error(`--${name} needs a value`);
        v = next;
        i++;
      }
      this.values.set(name, v);
      this.repeated.set(name, [...(this.repeated.get(name) ?? []), v]);
    }
  }

  /** Env fallback name: BENCH_ + upper snake case (`--meter-event-name` -> BENCH_METER_EVENT_NAME). */
  static envName(name: string): string {
    return `BENCH_${name.toUpperCase().replace(/-/g, '_')}`;
  }

  str(name: string, def: string): string;
  str(name: string, def?: string): string | undefined;
  str(name: string, def?: string): string | undefined {
    return this.values.get(name) ?? process.env[Args.envName(name)] ?? def;
  }

  /** A repeatable flag (`--x a --x b`), each value also split on commas; env fallback BENCH_<FLAG> (comma-separated). */
  list(name: string): string[] {
    const raw = this.repeated.get(name) ?? (process.env[Args.envName(name)] !== undefined ? [process.env[Args.envName(name)]!] : []);
    return raw
      .flatMap((v) => v.split(','))
      .map((v) => v.trim())
      .filter(Boolean);
  }

  num(name: string, def: number): number {
    const raw = this.str(name);
    if (raw === undefined || raw === '') return def;
    const n = Number(raw.replace(/[,_]/g, ''));
    if (!Number.isFinite(n)) throw new Error(`--${name}: not a number: ${raw}`);
    return n;
  }

  bool(name: string): boolean {
    if (this.flags.has(name)) return true;
    const v = this.values.get(name) ?? process.env[Args.envName(name)];
    return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
  }

  /** The raw `--name value` pairs given on the command line (for pass-through). */
  has(name: string): boolean {
    return this.values.has(name) || this.flags.has(name);
  }
}
