import type { KvDtype, KvQuantOptions } from '../cache/kv-cache.ts';
import type { Int8Grouping } from '../tensor/quantize.ts';
import { selectBackend } from '../tensor/select-backend.ts';
import { loadModel, type LoadedModel } from './loaded-model.ts';

/** What a worker thread loads: the options of loadModel, minus what cannot cross threads. */
export interface ModelLoadSpec {
  dir: string;
  weights: 'checkpoint' | 'int8';
  int8Group?: Int8Grouping;
  kvDtype: KvDtype;
  kvQuant?: KvQuantOptions;
  mmap: boolean;
}

export function loadModelFromSpec(spec: ModelLoadSpec): LoadedModel {
  return loadModel(spec.dir, { backend: selectBackend(), weights: spec.weights, int8Group: spec.int8Group, kvDtype: spec.kvDtype, kvQuant: spec.kvQuant, mmap: spec.mmap });
}
