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
 */
export class OutputText {
  readonly tokens: number[] = [];
  text = '';
  /** Characters of text already handed out. */
  emitted = 0;
  private readonly stops: string[];

  constructor(
    private readonly tokenizer: { decode(ids: number[], opts: { skipSpecialTokens: boolean }): string },
    private readonly stopIds: ReadonlySet<number>,
    stopStrings: readonly string[],
  ) {
    this.stops = stopStrings.filter((s) => s.length > 0);
  }

  /** Takes a sampled token; true when the output ends here (a stop id, or a stop string now in the text). */
  push(id: number): boolean {
    if (this.stopIds.has(id)) return true;
    this.tokens.push(id);
    this.text = this.tokenizer.decode(this.tokens, { skipSpecialTokens: true });
    const cut = firstStop(this.text, this.stops);
    if (cut < 0) return false;
    this.text = this.text.slice(0, cut);
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
