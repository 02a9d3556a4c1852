/**
 * A single-consumer async queue: the producer pushes values and closes it (with an error, or not); the
 * consumer iterates with `for await`, receiving what was pushed before it started as well.
 */
export class EventChannel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private readonly waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private closed = false;
  private failure: { error: unknown } | null = null;

  push(value: T): void {
    if (this.closed) return;
    const w = this.waiting.shift();
    if (w) w.resolve({ value, done: false });
    else this.items.push(value);
  }

  close(error?: unknown): void {
    if (this.closed) return;
    this.closed = true;
    if (error !== undefined) this.failure = { error };
    for (const w of this.waiting.splice(0)) {
      if (this.failure) w.reject(this.failure.error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.closed) return this.failure ? Promise.reject(this.failure.error) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
      },
      return: () => {
        this.items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
