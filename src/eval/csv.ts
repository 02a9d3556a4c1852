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

/**
 * Parses RFC 4180 text (what toCsv writes: CRLF or LF line ends, quoted fields with doubled quotes) into rows
 * keyed by the header. Throws with the 1-based record number on a record of another width or an open quote.
 */
export function parseCsv(text: string, source = 'CSV'): Record<string, string>[] {
  const records: string[][] = [];
  let field = '';
  let record: string[] = [];
  let quoted = false;
  let i = 0;
  const endRecord = () => {
    record.push(field);
    field = '';
    if (!(record.length === 1 && record[0] === '')) records.push(record);
    record = [];
  };
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 2;
        continue;
      }
      if (c === '"') quoted = false;
      else field += c;
      i++;
      continue;
    }
    if (c === '"' && field === '') quoted = true;
    else if (c === ',') {
      record.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      endRecord();
      i++;
    } else if (c === '\n') endRecord();
    else field += c;
    i++;
  }
  if (quoted) throw new Error(`${source}: a quoted field is not closed`);
  if (field !== '' || record.length) endRecord();
  const [header, ...rows] = records;
  if (!header) return [];
  return rows.map((r, k) => {
    if (r.length !== header.length) throw new Error(`${source}: record ${k + 2} has ${r.length} fields, the header ${header.length}`);
    return Object.fromEntries(header.map((h, j) => [h, r[j]!]));
  });
}
