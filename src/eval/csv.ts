/**
 * RFC 4180 CSV: CRLF line ends; a field holding a comma, double quote, CR or LF is wrapped in double quotes
 * with inner quotes doubled. The header is the union of the rows' keys in first-seen order (or `columns`).
 * null and undefined become empty fields, objects and arrays their JSON text.
 */
export function toCsv(rows: Record<string, unknown>[], columns?: string[]): string {
  const keys = columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const lines = [keys.map(csvField), ...rows.map((r) => keys.map((k) => csvField(r[k])))];
  return lines.map((fields) => `${fields.join(',')}\r\n`).join('');
}

/** One CSV field, quoted when needed. */
export function csvField(v: unknown): string {
  const s = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}
