import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

/** A progress bar on stderr for long work; silent when stderr is not a terminal (unless KVLAB_PROGRESS=1). */
export function progressBar(label: string, minTotal = 0): Progress {
  const show = process.stderr.isTTY || process.env.KVLAB_PROGRESS === '1';
  let bar: cliProgress.SingleBar | null = null;
  return {
    update(done, total) {
      if (!show || total < minTotal) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          { format: `${label.padEnd(10)} [{bar}] {value}/{total} {eta_formatted}`, stream: process.stderr, noTTYOutput: true, notTTYSchedule: 2000, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, done);
      } else {
        bar.setTotal(total);
        bar.update(done);
      }
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}
