import type { Addon } from './native.ts';

/** The addon's kernel functions a forward step calls, with the addon's own argument lists. */
export type Kernels = Pick<Addon, 'matmul' | 'attention' | 'rmsnorm' | 'rope' | 'siluMul' | 'embedding' | 'add' | 'addRowBias' | 'copyRows' | 'attentionPrefixed' | 'attentionQuant' | 'attentionPruned'>;

/** Op codes of runStep, in the order of the OpCode enum in native/src/step.cc. */
const OP = { matmul: 0, attention: 1, rmsnorm: 2, rope: 3, siluMul: 4, embedding: 5, add: 6, addRowBias: 7, copyRows: 8, attentionPrefixed: 9, attentionQuant: 10, attentionPruned: 11 } as const;

export type StepOp = readonly [code: number, label: string, ...args: unknown[]];

/**
 * Records kernel calls instead of running them: each becomes [code, label, ...the same arguments], and the
 * list is handed to the addon's runStep as one async work. The list is never changed after run(), so the
 * reference the addon holds on it keeps every array it names alive until the step completes.
 */
export class StepList implements Kernels {
  private readonly ops: StepOp[] = [];

  constructor(private readonly lib: Pick<Addon, 'runStep'>) {}

  get length(): number {
    return this.ops.length;
  }

  /** Executes the recorded calls in order on the addon's pool; rejects naming the op that failed. */
  run(): Promise<void> {
    const ops = Object.freeze(this.ops.splice(0));
    return new Promise((resolve, reject) => this.lib.runStep(ops, (err) => (err ? reject(err) : resolve())));
  }

  matmul(...a: Parameters<Kernels['matmul']>): void {
    this.ops.push([OP.matmul, `matmul ${a[5]}x${a[6]} n=${a[2]}`, ...a]);
  }
  attention(...a: Parameters<Kernels['attention']>): void {
    this.ops.push([OP.attention, `attention nq=${a[2]}`, ...a]);
  }
  attentionPrefixed(...a: Parameters<Kernels['attentionPrefixed']>): void {
    this.ops.push([OP.attentionPrefixed, `attention (shared prefix) nq=${a[2]}`, ...a]);
  }
  attentionPruned(...a: Parameters<Kernels['attentionPruned']>): void {
    this.ops.push([OP.attentionPruned, `attention (channel-pruned keys) nq=${a[2]}`, ...a]);
  }
  attentionQuant(...a: Parameters<Kernels['attentionQuant']>): void {
    this.ops.push([OP.attentionQuant, `attention (int${a[15]} cache) nq=${a[2]}`, ...a]);
  }
  rmsnorm(...a: Parameters<Kernels['rmsnorm']>): void {
    this.ops.push([OP.rmsnorm, 'rmsnorm', ...a]);
  }
  rope(...a: Parameters<Kernels['rope']>): void {
    this.ops.push([OP.rope, 'rope', ...a]);
  }
  siluMul(...a: Parameters<Kernels['siluMul']>): void {
    this.ops.push([OP.siluMul, 'siluMul', ...a]);
  }
  embedding(...a: Parameters<Kernels['embedding']>): void {
    this.ops.push([OP.embedding, 'embedding', ...a]);
  }
  add(...a: Parameters<Kernels['add']>): void {
    this.ops.push([OP.add, 'add', ...a]);
  }
  addRowBias(...a: Parameters<Kernels['addRowBias']>): void {
    this.ops.push([OP.addRowBias, 'addRowBias', ...a]);
  }
  copyRows(...a: Parameters<Kernels['copyRows']>): void {
    this.ops.push([OP.copyRows, 'copyRows', ...a]);
  }
}
