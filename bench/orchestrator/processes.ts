/** Child processes of the bench: start, wait for health, stop; the generator's run and its JSON result. */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import type { GenResult } from './rows';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'meterd') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export function httpStatus(port: number, p: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/**
 * What `npm start` sets for the server (package.json's start script), so that the bench measures what users run:
 * glibc's mmap threshold fixed at 1 MiB (README, "Memory: glibc's mmap threshold"). The caller's environment wins.
 */
export const START_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '1048576' };

export const children = new Set<ChildProcess>();
export const tempDirs = new Set<string>();

export function startNode(script: string, args: string[], env: NodeJS.ProcessEnv, logPath: string): ChildProcess {
  const fd = fs.openSync(logPath, 'a');
  const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  child.kill('SIGTERM');
  if (await waitExit(child, 10_000)) return;
  process.stderr.write(`bench: pid ${child.pid} did not stop within 10 s of SIGTERM; sending SIGKILL\n`);
  child.kill('SIGKILL');
  await waitExit(child, 5_000);
}

export function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

export async function waitHealthy(child: ChildProcess, port: number, logPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(child)) {
      const t = tail(logPath);
      const last =
        t
          .split('\n')
          .filter((l) => l.trim())
          .pop() ?? '';
      throw new Error(
        `process exited (code ${child.exitCode}, signal ${child.signalCode}) before /healthz answered 200: ` +
          `${last.slice(0, 240)} (log ${logPath}); log tail:\n${t}`,
      );
    }
    if ((await httpStatus(port, '/healthz')) === 200) return;
    await sleep(100);
  }
  throw new Error(`/healthz did not answer 200 within ${timeoutMs / 1000} s; log tail:\n${tail(logPath)}`);
}

export function runGenerator(script: string, args: string[], timeoutMs: number): Promise<{ code: number | null; result: GenResult | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
    });
    const timer = setTimeout(() => {
      process.stderr.write(`bench: generator exceeded ${timeoutMs / 1000} s; killing it\n`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      children.delete(child);
      const last = out.trim().split('\n').pop() ?? '';
      let result: GenResult | null = null;
      try {
        result = JSON.parse(last) as GenResult;
      } catch {
        result = null;
      }
      resolve({ code, result });
    });
  });
}

/** Ctrl-C or a crash of the bench: no child and no temp dir is left behind. */
export function killChildrenAndRemoveTemp(): void {
  for (const c of children) {
    if (!exited(c)) c.kill('SIGKILL');
  }
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
}
