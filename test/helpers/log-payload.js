'use strict';
/** Deterministic record contents for the embedded-log tests: `seq:<n>;` followed by bytes derived from n. */

function makeCrashPayload(seq) {
  const head = Buffer.from(`seq:${seq};`);
  const len = 200 + ((seq * 7919) % 12000);
  const buf = Buffer.allocUnsafe(head.length + len);
  head.copy(buf, 0);
  for (let i = 0; i < len; i++) buf[head.length + i] = (seq * 31 + i) & 0xff;
  return buf;
}

/** Returns the seq a payload was made from, or -1 when the payload is not a valid one. */
function checkCrashPayload(buf) {
  const semi = buf.indexOf(0x3b); // ';'
  if (semi < 0 || buf.subarray(0, 4).toString() !== 'seq:') return -1;
  const seq = Number(buf.subarray(4, semi).toString());
  if (!Number.isSafeInteger(seq)) return -1;
  return makeCrashPayload(seq).equals(buf) ? seq : -1;
}

module.exports = { makeCrashPayload, checkCrashPayload };
