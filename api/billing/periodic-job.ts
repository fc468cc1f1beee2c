/**
 * A background job run every `intervalMs` on an API process: at most one pass at a time (a tick during a pass is
 * skipped), a failed pass is logged and the next tick tries again, and `stop()` waits for the running pass. Timers
 * start from the job's own async scope, never from a caller's (a store transaction's context).
 */
import { AsyncResource } from 'node:async_hooks';
import { log } from '../../shared/logger';

export abstract class PeriodicJob {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  protected stopped = false;
  private readonly scope: AsyncResource;

  constructor(
    private readonly name: string,
    private readonly intervalMs: number,
  ) {
    this.scope = new AsyncResource(name);
  }

  /** One pass; it should return early once `stopped` is set. */
  abstract run(): Promise<void>;

  start(): void {
    this.scope.runInAsyncScope(() => {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    });
  }

  /** Stops the timer and waits for a running pass to end. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  tick(): void {
    if (this.stopped || this.running) return;
    this.running = this.run()
      .catch((err) => {
        if (!this.stopped) log.warn(`${this.name} failed`, { err: String(err) });
      })
      .finally(() => {
        this.running = null;
      });
  }
}

/** Starts and stops the one job of a kind in this process (starting again replaces the running one). */
export function jobSlot<A extends unknown[]>(make: (...args: A) => PeriodicJob): { start(...args: A): void; stop(): Promise<void> } {
  let active: PeriodicJob | null = null;
  return {
    start(...args: A) {
      if (active) void active.stop();
      active = make(...args);
      active.start();
    },
    async stop() {
      const a = active;
      active = null;
      if (a) await a.stop();
    },
  };
}
