/** Reading the head of a WebSocket batch frame without decoding it (for the null server). */

/**
 * The head of a WebSocket batch frame as the client package encodes it (msgpack map: `id` string first, then `events`
 * array): its id and event count, without decoding the events. Null when the frame does not start that way.
 */
export function peekBatch(buf: Buffer): { id: string; events: number } | null {
  let p = 0;
  const b0 = buf[p++];
  if (b0 === undefined) return null;
  if (b0 >= 0x80 && b0 <= 0x8f) {
    // fixmap
  } else if (b0 === 0xde) p += 2;
  else if (b0 === 0xdf) p += 4;
  else return null;
  const str = (): string | null => {
    const t = buf[p++];
    let len: number;
    if (t === undefined) return null;
    if (t >= 0xa0 && t <= 0xbf) len = t - 0xa0;
    else if (t === 0xd9) len = buf[p++] ?? -1;
    else if (t === 0xda) {
      len = buf.readUInt16BE(p);
      p += 2;
    } else return null;
    if (len < 0 || p + len > buf.length) return null;
    const v = buf.toString('utf8', p, p + len);
    p += len;
    return v;
  };
  if (str() !== 'id') return null;
  const id = str();
  if (id === null || str() !== 'events' || p >= buf.length) return null;
  const t = buf[p]!;
  if (t >= 0x90 && t <= 0x9f) return { id, events: t - 0x90 };
  if (t === 0xdc && p + 3 <= buf.length) return { id, events: buf.readUInt16BE(p + 1) };
  if (t === 0xdd && p + 5 <= buf.length) return { id, events: buf.readUInt32BE(p + 1) };
  return null;
}
