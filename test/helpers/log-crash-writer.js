'use strict';
/**
 * Child process for the embedded-log crash test. Appends continuously with many appends in flight (so group commit
 * is exercised) and prints one line per ACKNOWLEDGED append: `<partition> <offset> <seq>`. The parent SIGKILLs it.
 *
 * argv: <dir> <partitions> <segmentBytes> [path of the compiled embedded-log module]
 */
const path = require('node:path');
const { makeCrashPayload } = require('./log-payload.js');

const [dir, partitionsArg, segmentBytesArg, modArg] = process.argv.slice(2);
const mod = require(modArg || path.join(__dirname, '../../dist/shared/log/embedded-log/index.js'));

async function main() {
  const partitions = Number(partitionsArg);
  const log = await mod.EmbeddedLog.open(dir, { partitions, segmentBytes: Number(segmentBytesArg) });
  const producer = log.producer();
  let seq = 0;
  const inFlight = 64;
  process.stdout.write('ready\n');
  const worker = async () => {
    for (;;) {
      const s = seq++;
      const p = s % partitions;
      const offset = await producer.append(p, makeCrashPayload(s));
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
