/**
 * The layout rules, checked rather than hoped for (README, "Layout"). Reads every source file's imports (static,
 * dynamic and re-exports, type-only included: a type import is still a dependency of the design) and fails on:
 *  - ingest/ importing api/, or api/ importing ingest/;
 *  - aggregator/ importing HTTP code (shared/http/, node:http, uWebSockets.js);
 *  - shared/ importing anything above it (ingest/, aggregator/, api/, bench/, main.ts);
 *  - a driver package imported outside its driver module;
 *  - an import cycle.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');
const SOURCE_DIRS = ['ingest', 'aggregator', 'api', 'shared', 'bench'];
const DRIVER_MODULES: Record<string, RegExp> = {
  kafkajs: /^shared\/log\/kafka-log(\/|\.ts$)/,
  '@clickhouse/client': /^shared\/analytics\/server-store\.ts$/,
  chdb: /^shared\/analytics\/chdb-store\.ts$/,
  'better-sqlite3': /^shared\/state\/sqlite-store\.ts$/,
  pg: /^shared\/state\/postgres-store\.ts$/,
  // Not a driver, but the state store's query builder: the rest of the code goes through the StateStore interface.
  kysely: /^shared\/state\//,
};
const HTTP_PACKAGES = new Set(['node:http', 'http', 'node:https', 'https', '@trufflesuite/uws-js-unofficial']);

function sources(): string[] {
  const out = ['main.ts'];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
    }
  };
  for (const d of SOURCE_DIRS) walk(d);
  return out;
}

const IMPORT =
  /(?:^|[^\w.])(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]|(?:^|[^\w.])import\s*\(\s*['"]([^'"]+)['"]\s*\)|(?:^|[^\w.])require\s*\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s*['"]([^'"]+)['"]/gm;

/** The imports of a file, comments removed: [specifier, resolved project path or null for a package]. */
export function importsOf(file: string, text: string): [string, string | null][] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const out: [string, string | null][] = [];
  for (const m of code.matchAll(IMPORT)) {
    const spec = m[1] ?? m[2] ?? m[3] ?? m[4];
    if (!spec.startsWith('.')) {
      out.push([spec, null]);
      continue;
    }
    const base = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
    const candidates = [`${base}.ts`, `${base}/index.ts`, base];
    const found = candidates.find((c) => fs.existsSync(path.join(ROOT, c)) && fs.statSync(path.join(ROOT, c)).isFile());
    out.push([spec, found ?? base]);
  }
  return out;
}

function packageName(spec: string): string {
  return spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
}

const layer = (f: string) => (f === 'main.ts' ? 'main' : f.split('/')[0]);

t.test('layout rules', async (t) => {
  const files = sources();
  const graph = new Map<string, string[]>();
  const violations: string[] = [];
  for (const file of files) {
    const edges: string[] = [];
    for (const [spec, target] of importsOf(file, fs.readFileSync(path.join(ROOT, file), 'utf8'))) {
      if (target === null) {
        const pkg = packageName(spec);
        const driver = DRIVER_MODULES[pkg];
        if (driver && !driver.test(file)) violations.push(`${file} imports the driver package ${pkg}, which only its driver module may`);
        if (layer(file) === 'aggregator' && HTTP_PACKAGES.has(pkg)) violations.push(`${file} imports HTTP code (${pkg})`);
        continue;
      }
      edges.push(target);
      const from = layer(file);
      const to = layer(target);
      if ((from === 'ingest' && to === 'api') || (from === 'api' && to === 'ingest'))
        violations.push(`${file} imports ${target}: ingest/ and api/ never import each other`);
      if (from === 'aggregator' && target.startsWith('shared/http/')) violations.push(`${file} imports HTTP code (${target})`);
      if (from === 'shared' && to !== 'shared') violations.push(`${file} imports ${target}: shared/ is the ground floor and imports nothing above it`);
    }
    graph.set(file, edges);
  }

  // Tarjan's strongly connected components: any component of more than one file (or a self-import) is a cycle.
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(comp.sort());
    }
  };
  for (const f of files) if (!idx.has(f)) visit(f);
  for (const c of cycles) violations.push(`import cycle: ${c.join(' <-> ')}`);

  t.ok(files.length > 50, `${files.length} source files read`);
  t.same(violations, [], 'no layout rule is broken');
});

t.test('the checker sees what it must', async (t) => {
  const imports = importsOf(
    'api/x.ts',
    "import a from '../ingest/meter-events';\nconst k = await import('kafkajs');\n// import b from '../ingest/no'\nexport { c } from './y';\n",
  );
  t.same(
    imports.map(([s]) => s),
    ['../ingest/meter-events', 'kafkajs', './y'],
    'static, dynamic and re-exports; not comments',
  );
  t.equal(imports[0][1], 'ingest/meter-events.ts', 'resolved to the file');
});
