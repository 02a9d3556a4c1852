import { Worker } from 'node:worker_threads';

/**
 * Starts `entry` (a module URL next to the caller, .ts from a source checkout, .js from the build) on a worker
 * thread. From a source checkout the thread registers tsx itself: hooks registered on the main thread do not
 * reach worker threads.
 */
export function startTsWorker(entry: URL, workerData: unknown): Worker {
  if (!entry.href.endsWith('.ts')) return new Worker(entry, { workerData });
  const boot = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then(({ register }) => { register(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

/** The sibling module of `from` named `name`, with the extension `from` has (.ts in source, .js when built). */
export function siblingModule(from: string, name: string): URL {
  return new URL(`./${name}${from.endsWith('.ts') ? '.ts' : '.js'}`, from);
}
