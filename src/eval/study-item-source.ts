import type { InstructionRow, LeakageRow, SysIfevalRow } from './datasets.ts';
import { sysInstructionItem, sysLeakageItem } from './external-items.ts';
import type { StudyItem } from './prompt-study.ts';
import { instructionItem, leakageItem, type LeakageVariant } from './study-items.ts';

/**
 * The data a study item is built from (a dataset row and the options that shape it), as plain JSON: what a
 * queued job carries so that a worker rebuilds the same item, scorer included.
 */
export type StudyItemSource =
  | { kind: 'dev-instructions'; row: InstructionRow; addDefense: boolean }
  | { kind: 'dev-leakage'; row: LeakageRow; variant: LeakageVariant }
  | { kind: 'sys-instructions'; row: SysIfevalRow }
  | { kind: 'sys-leakage'; row: SysIfevalRow; defense: string; template: string; attack: string };

export function studyItemFromSource(source: StudyItemSource): StudyItem {
  switch (source.kind) {
    case 'dev-instructions':
      return instructionItem(source.row, source.addDefense);
    case 'dev-leakage':
      return leakageItem(source.row, source.variant);
    case 'sys-instructions':
      return sysInstructionItem(source.row);
    case 'sys-leakage':
      return sysLeakageItem(source.row, { defense: source.defense, template: source.template, attack: source.attack });
    default:
      throw new Error(`unknown study item source "${(source as { kind?: unknown }).kind}"`);
  }
}
