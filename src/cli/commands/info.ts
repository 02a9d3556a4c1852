import type { Command } from 'commander';
import { describeMethods } from '../../press/registry.ts';
import { nativeAvailable, nativeInfo, selectBackend } from '../../tensor/select-backend.ts';

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('show the compute backend, the active CPU paths and thread count')
    .option('--json', 'print JSON')
    .action((o) => {
      const backend = selectBackend();
      const info = { backend: backend.name, describe: backend.describe(), native: nativeAvailable() ? nativeInfo() : null };
      if (o.json) process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
      else {
        process.stdout.write(`backend: ${info.describe}\n`);
        if (info.native) process.stdout.write(`native: ${JSON.stringify(info.native, null, 2)}\n`);
      }
    });
  program
    .command('methods')
    .description('list the compression methods')
    .action(() => {
      for (const m of describeMethods()) process.stdout.write(`${m.name.padEnd(20)} ${m.describe}\n`);
    });
}
