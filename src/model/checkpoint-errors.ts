import { KvlabError } from '../tensor/kvlab-error.ts';

/** A checkpoint folder that cannot be loaded: the message names the file and, where one is at fault, the tensor. */
export class CheckpointError extends KvlabError {
  constructor(message: string, code = 'checkpoint') {
    super(code, message);
  }
}

/** config.json is missing, malformed, or describes a model this engine does not run. */
export class ConfigError extends CheckpointError {
  constructor(message: string) {
    super(message, 'config');
  }
}
