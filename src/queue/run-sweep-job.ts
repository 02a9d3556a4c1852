import type { LoadedModel } from '../engine/loaded-model.ts';
import { studyUnit } from '../eval/prompt-study.ts';
import { qaUnit } from '../eval/qa-eval.ts';
import { studyItemFromSource } from '../eval/study-item-source.ts';
import { getPress } from '../press/registry.ts';
import type { SweepJobData } from './sweep-jobs.ts';
import { studyUnitOptions } from './study-jobs.ts';

/** Runs one job on a worker's model with the same code as the local run's unit; returns that unit's result. */
export async function runSweepJob(lm: LoadedModel, data: SweepJobData): Promise<unknown> {
  const press = getPress(data.method);
  if (data.kind === 'qa') return qaUnit(lm, data.row, press, data);
  if (data.kind === 'study') {
    const item = studyItemFromSource(data.item.source);
    if (item.id !== data.item.id || (item.variant ?? 'original') !== data.item.variant) {
      throw new Error(`job ${data.unit}: its source rebuilds item ${JSON.stringify(item.id)} (${item.variant ?? 'original'}), not ${JSON.stringify(data.item.id)} (${data.item.variant})`);
    }
    return studyUnit(lm, item, press, studyUnitOptions(data));
  }
  throw new Error(`unknown job kind "${(data as { kind?: unknown }).kind}"`);
}
