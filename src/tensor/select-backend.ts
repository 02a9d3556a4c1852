import type { Backend } from './backend.ts';
import { ReferenceBackend } from './reference.ts';

export function nativeAvailable(): boolean {
  return false;
}

export function nativeInfo(): Record<string, unknown> | null {
  return null;
}

export function selectBackend(): Backend {
  const want = process.env.KVLAB_BACKEND;
  if (want === 'native') throw new Error('KVLAB_BACKEND=native, but the native addon is not built');
  if (want && want !== 'reference') throw new Error(`KVLAB_BACKEND must be "reference" or "native", got "${want}"`);
  return new ReferenceBackend();
}
