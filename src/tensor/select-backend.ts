import type { Backend } from './backend.ts';
import { loadAddon, NativeBackend, nativeLoadError, type NativeInfo } from './native.ts';
import { ReferenceBackend } from './reference.ts';

export function nativeAvailable(): boolean {
  return loadAddon() !== null;
}

export function nativeInfo(): NativeInfo | null {
  return loadAddon()?.info() ?? null;
}

let warned = false;

/** KVLAB_BACKEND=reference|native picks explicitly; by default native when the addon loads, else reference (said in one line). */
export function selectBackend(): Backend {
  const want = process.env.KVLAB_BACKEND;
  if (want === 'reference') return new ReferenceBackend();
  if (want === 'native') return new NativeBackend();
  if (want) throw new Error(`KVLAB_BACKEND must be "reference" or "native", got "${want}"`);
  if (nativeAvailable()) return new NativeBackend();
  if (!warned) {
    process.stderr.write(`kvlab: native addon unavailable (${nativeLoadError()}); using the reference backend\n`);
    warned = true;
  }
  return new ReferenceBackend();
}
