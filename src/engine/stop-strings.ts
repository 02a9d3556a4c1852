/** Where the earliest stop string starts in text, or -1. */
export function firstStop(text: string, stops: readonly string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/** How much of text is final: not ending in a replacement char of an unfinished UTF-8 sequence, nor a stop-string prefix. */
export function stableLength(text: string, stops: readonly string[]): number {
  let end = text.length;
  while (end > 0 && text[end - 1] === '\uFFFD') end--;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, end); k > 0; k--) {
      if (text.slice(end - k, end) === s.slice(0, k)) {
        end -= k;
        break;
      }
    }
  }
  return end;
}

/**
 * The text of a generation as its tokens arrive: a stop id ends it before the token, a stop string cuts the text
 * where it starts; takeStable() hands out only text no later token can change (generate() and both schedulers).
 *
 * Decoding is incremental, so a step costs the same at token 10 and at token 10,000: only the tokens since the last
 * character boundary are decoded, together with the few before them (a tokenizer's decoder may drop or merge
 * spaces at the start of what it decodes, so the new text is the difference of two decodes over the same window).
 */
export class OutputText {
  readonly tokens: number[] = [];
  text = '';
  /** Characters of text already handed out. */
  emitted = 0;
  private readonly stops: string[];
  private readonly longestStop: number;
  /** Text of tokens[0, readFrom): it ended on a whole character. */
  private settled = '';
  /** The window decoded with the new tokens starts here (readFrom's earlier boundary). */
  private windowFrom = 0;
  private readFrom = 0;
  /** settled text up to here has no stop string in it (unsettled text can still change). */
  private scanned = 0;

  constructor(
    private readonly tokenizer: { decode(ids: number[], opts: { skipSpecialTokens: boolean }): string },
    private readonly stopIds: ReadonlySet<number>,
    stopStrings: readonly string[],
  ) {
    this.stops = stopStrings.filter((s) => s.length > 0);
    this.longestStop = Math.max(0, ...this.stops.map((s) => s.length));
  }

  /** Takes a sampled token; true when the output ends here (a stop id, or a stop string now in the text). */
  push(id: number): boolean {
    if (this.stopIds.has(id)) return true;
    this.tokens.push(id);
    const decode = (from: number, to: number) => (to > from ? this.tokenizer.decode(this.tokens.slice(from, to), { skipSpecialTokens: true }) : '');
    const before = decode(this.windowFrom, this.readFrom);
    const fresh = decode(this.windowFrom, this.tokens.length).slice(before.length);
    this.text = this.settled + fresh;
    if (fresh.length > 0 && !fresh.endsWith('\uFFFD')) {
      this.settled = this.text;
      this.windowFrom = this.readFrom;
      this.readFrom = this.tokens.length;
    }
    if (this.stops.length === 0) return false;
    const from = Math.max(0, this.scanned - this.longestStop + 1);
    const cut = firstStop(this.text.slice(from), this.stops);
    if (cut < 0) {
      this.scanned = this.settled.length;
      return false;
    }
    this.text = this.text.slice(0, from + cut);
    return true;
  }

  /** Text that became final since the last call ('' when none). */
  takeStable(): string {
    const safe = stableLength(this.text, this.stops);
    if (safe <= this.emitted) return '';
    const delta = this.text.slice(this.emitted, safe);
    this.emitted = safe;
    return delta;
  }

  /** The rest of the text, once the generation has ended. */
  takeRest(): string {
    const delta = this.text.slice(this.emitted);
    this.emitted = this.text.length;
    return delta;
  }
}
