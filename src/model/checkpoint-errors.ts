/** A checkpoint folder that cannot be loaded: the message names the file and, where one is at fault, the tensor. */
export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

/** config.json is missing, malformed, or describes a model this engine does not run. */
export class ConfigError extends CheckpointError {
  override name = 'ConfigError';
}
