import { homedir } from 'node:os';
import { join } from 'node:path';

/** The server's defaults, in a module of their own so that reading them loads no HTTP code. */
export const DEFAULT_BODY_LIMIT = 8 * 1024 * 1024;
export const DEFAULT_MAX_TOKENS = 256;

/** Where contexts persist by default: the user's cache folder ($XDG_CACHE_HOME or ~/.cache), kvlab/contexts. */
export function defaultStoreDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'kvlab', 'contexts');
}
