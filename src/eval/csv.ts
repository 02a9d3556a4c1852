/** RFC 4180 CSV: header from the union of keys, fields quoted when they hold a comma, quote or newline. */
export function toCsv(rows: Record<string, unknown>[]): string {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const field = (v: unknown): string => {
    const s = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  return [keys.map(field).join(','), ...rows.map((r) => keys.map((k) => field(r[k])).join(','))].join('\r\n') + '\r\n';
}
