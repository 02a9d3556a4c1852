import type { Backend } from './backend.ts';
import { loadAddon, NativeBackend, nativeLoadError, type NativeInfo } from './native.ts';
import { ReferenceBackend } from './reference.ts';

/** Whether the compiled addon loads in this process. */
export function nativeAvailable(): boolean {
  return loadAddon() !== null;
}

/** CPU features, active kernel paths and thread count of the addon, or null without it. */
export function nativeInfo(): NativeInfo | null {
  return loadAddon()?.info() ?? null;
}

let warned = false;

/**
 * KVLAB_BACKEND=reference|native picks explicitly (native requested but unavailable is an error); by
 * default native when the addon loads, else the reference backend, said once in one line on stderr.
 */
export function selectBackend(): Backend {
  const want = process.env.KVLAB_BACKEND;
  if (want === 'reference') return new ReferenceBackend();
  if (want === 'native') {
    if (!nativeAvailable()) throw new Error(`KVLAB_BACKEND=native, but the native addon is unavailable: ${nativeLoadError()}`);
    return new NativeBackend();
  }
  if (want) throw new Error(`KVLAB_BACKEND must be "reference" or "native", got "${want}"`);
  if (nativeAvailable()) return new NativeBackend();
  if (!warned) {
    process.stderr.write(`kvlab: native addon unavailable (${nativeLoadError()}); using the reference backend\n`);
    warned = true;
  }
  return new ReferenceBackend();
}
