'use strict';
/**
 * Child process for the embedded-log crash test. Appends continuously with many appends in flight (so group commit
 * is exercised) and prints one line per ACKNOWLEDGED append: `<partition> <offset> <seq>`. The parent SIGKILLs it.
 *
 * argv: <dir> <partitions> <segmentBytes> [path of the compiled embedded-log module] [mode]
 *
 * mode: `main` (default: the writers on this thread), `thread` (writerThread: appends sent to the writer thread), or
 * `port` (writerThread, appends made through an append port; the offset is not known there and printed as -1).
 */
const path = require('node:path');
const { makeCrashPayload } = require('./log-payload.js');

const [dir, partitionsArg, segmentBytesArg, modArg, modeArg] = process.argv.slice(2);
const modPath = modArg || path.join(__dirname, '../../dist/shared/log/embedded-log/index.js');
const mod = require(modPath);
const mode = modeArg || 'main';

async function main() {
  const partitions = Number(partitionsArg);
  const log = await mod.EmbeddedLog.open(dir, { partitions, segmentBytes: Number(segmentBytesArg), writerThread: mode !== 'main' });
  const producer = log.producer();
  let append = (p, value) => producer.append(p, value);
  if (mode === 'port') {
    const { PortAppender } = require(path.join(path.dirname(modPath), '../append-port.js'));
    const appender = new PortAppender(producer.appendPort());
    append = async (p, value) => {
      const own = new Uint8Array(value.length);
      own.set(value);
      await appender.append([[p, own]]);
      return -1;
    };
  }
  let seq = 0;
  const inFlight = 64;
  process.stdout.write('ready\n');
  const worker = async () => {
    for (;;) {
      const s = seq++;
      const p = s % partitions;
      const offset = await append(p, makeCrashPayload(s));
      // stdout to a pipe is synchronous on Linux: once written, the line reaches the parent even if we die next.
      process.stdout.write(`${p} ${offset} ${s}\n`);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ? err.stack : err}\n`);
  process.exit(1);
});
