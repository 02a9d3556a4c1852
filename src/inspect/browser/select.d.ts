// Types of select.js (plain JavaScript so that the inspector page runs it unchanged); tsconfig.json beside
// them checks select.js against its JSDoc with `tsc -p src/inspect/browser`.
export type BudgetSpec =
  | { kind: 'uniform' }
  | { kind: 'global' }
  | { kind: 'pyramid'; beta: number }
  | { kind: 'adakv'; alpha: number }
  | { kind: 'heads'; sink?: number; recent?: number };
export interface NamedRange {
  name: string;
  start: number;
  end: number;
}
export interface Protection {
  whitelist?: string[];
  fair?: { lambda: number };
}
export type ScoreGrid = ArrayLike<number>[][];
export interface SelectionInput {
  budget: BudgetSpec;
  scores: ScoreGrid;
  ranges: NamedRange[];
  protection?: Protection;
  localScores?: ScoreGrid;
}
export function keptCount(spanLength: number, ratio: number): number;
export function compareScores(a: number, b: number): number;
export function rankOrder(scores: ArrayLike<number>): Int32Array;
export function pyramidLayerBudgets(layers: number, T: number, ratio: number, beta: number): number[];
export function apportion(targets: number[], total: number, caps: number[]): number[];
export function createSelector(input: SelectionInput): { select(ratio: number): Int32Array[][] };
export function keptCounts(keep: Int32Array[][], T: number): Int32Array;
export function spanKeepRates(keep: Int32Array[][], ranges: NamedRange[]): Record<string, number>;
