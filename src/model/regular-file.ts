import { readFileSync, statSync } from 'node:fs';

/** What kind of file system entry a path is, for messages ("a directory", "a FIFO", ...). */
function kindOf(path: string): string | null {
  let st;
  try {
    st = statSync(path);
  } catch {
    return null;
  }
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/**
 * Checks that `path` is an existing regular file before it is opened: opening a FIFO blocks until a writer
 * appears, and a device can stream forever, so both are refused by name instead of read.
 * `what` names the file's role in the message ("config.json", "--context file").
 */
export function checkRegularFile(path: string, what: string, makeError: (msg: string) => Error = (m) => new Error(m)): void {
  const kind = kindOf(path);
  if (kind === null) throw makeError(`${what} not found: ${path}`);
  if (kind !== 'a regular file') throw makeError(`${what} ${path} is ${kind}, not a regular file`);
}

/** readFileSync(path, 'utf8') after checkRegularFile. */
export function readRegularText(path: string, what: string, makeError?: (msg: string) => Error): string {
  checkRegularFile(path, what, makeError);
  return readFileSync(path, 'utf8');
}
