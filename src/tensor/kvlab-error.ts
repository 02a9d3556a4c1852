/**
 * The base of every error kvlab raises on purpose: `code` is stable (programs branch on it), the message
 * names the problem and the file, option or field at fault.
 */
export class KvlabError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A prompt or context longer than the model's max_position_embeddings. */
export class ContextTooLongError extends KvlabError {
  constructor(message: string) {
    super('context_too_long', message);
  }
}

/** A compression ratio outside [0, 1]. */
export class RatioError extends KvlabError {
  constructor(message: string) {
    super('ratio_out_of_range', message);
  }
}

/** A method name that is not registered (or a registration that would shadow one). */
export class MethodNameError extends KvlabError {
  constructor(message: string) {
    super('unknown_method', message);
  }
}

/** A cache operation its layout cannot take (e.g. ThinK key-channel pruning on a quantized cache, a bad channel list). */
export class KvCacheLayoutError extends KvlabError {
  constructor(message: string) {
    super('kv_layout', message);
  }
}
