import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, type Command } from 'commander';
import { parseByteSize } from '../../cache/kv-pool.ts';
import { DataFileError, loadQa } from '../../eval/datasets.ts';
import { writeAtomic } from '../../eval/write-outputs.ts';
import { intOption, listOption, modelOptions, numberOption, openModel, queryTemplateOption } from '../common.ts';

function positiveList(what: string) {
  return (value: string, previous: number[] = []): number[] => [
    ...previous,
    ...listOption(value).map((s) => {
      const x = Number(s);
      if (!(Number.isFinite(x) && x > 0)) throw new InvalidArgumentError(`${what}: "${s}" is not a positive number`);
      return x;
    }),
  ];
}

const DEV_QA = fileURLToPath(new URL('../../../data/dev/qa.jsonl', import.meta.url));

/** `kvlab bench serve`: a seeded Poisson trace replayed per method x ratio against the batching scheduler (or a running server). */
export function registerBenchServe(program: Command): void {
  const bench = program.commands.find((c) => c.name() === 'bench');
  if (!bench) throw new Error('registerBenchServe(): register the bench command first');
  modelOptions(
    bench
      .command('serve')
      .description('serving study: replay a seeded Poisson trace per method x ratio against the batching scheduler (in process) or a kvlab serve URL; throughput, TTFT/TPOT/e2e percentiles, batch size and pool bytes; prints JSON'),
  )
    .option('-d, --data <file>', 'QA JSONL rows {id, context, questions[], answers[]}: contexts and questions of the requests (default: the dev QA set)')
    .option('--num-contexts <n>', 'contexts used (the first n rows)', intOption('--num-contexts', 1), 4)
    .option('--method <names>', 'full and/or registered methods', listOption)
    .option('-r, --ratio <list>', 'kept ratios in (0, 1]', positiveList('--ratio'))
    .option('--rate <list>', 'arrival rates, requests per second', positiveList('--rate'))
    .option('--requests <n>', 'requests per trace', intOption('--requests', 1), 24)
    .option('--rounds <n>', 'replays of every setting x rate, settings interleaved; throughput is the median over rounds', intOption('--rounds', 1), 1)
    .option('--seed <n>', 'trace (and sampling) seed', intOption('--seed'), 1)
    .option('--output-tokens <dist>', 'max tokens per request: fixed:N or uniform:A-B', 'fixed:32')
    .option('--query-template <t>', 'how a question becomes the user message; {query} is replaced', queryTemplateOption, 'Question: {query}')
    .option('--kv-memory <bytes>', 'KV pool budget of the in-process scheduler (contexts and sequences), e.g. 24M', '24M')
    .option('--max-batch <n>', 'sequences per step of the in-process scheduler', intOption('--max-batch', 1), 16)
    .option('--temperature <t>', '0 decodes greedily; above it each request samples with a seeded generator', numberOption('--temperature', 0, 10), 0)
    .option('--sample-ms <n>', 'how often batch size and pool bytes are sampled', intOption('--sample-ms', 1), 5)
    .option('--url <url>', 'replay against this running kvlab serve (openai client) instead of in process')
    .option('--api-key <key>', 'API key of the server at --url')
    .option('-o, --out <dir>', 'write serve.json and the SVG plots here')
    .action(async (_local, cmd: Command) => {
      // The bench command's own options (-o, --out) are parsed by it; read them merged with this command's.
      const o = cmd.optsWithGlobals();
      const { parseOutputLengths } = await import('../../bench/serve-trace.ts');
      const { runServeBench, servePlots } = await import('../../bench/serve-bench.ts');
      const outputTokens = parseOutputLengths(o.outputTokens as string);
      const poolBytes = parseByteSize(o.kvMemory as string);
      let rows = loadQa((o.data as string | undefined) ?? DEV_QA);
      if (rows.length < (o.numContexts as number)) throw new DataFileError(`${o.data ?? DEV_QA}: ${rows.length} rows, fewer than --num-contexts ${o.numContexts}`);
      rows = rows.slice(0, o.numContexts as number);
      const lm = o.url ? null : openModel(o.model, o.weights, o.kvDtype);
      const { report, entries } = await runServeBench(lm, {
        rows,
        methods: o.method ?? ['full', 'kvzip', 'snapkv', 'streamingllm'],
        ratios: o.ratio ?? [1, 0.5, 0.3, 0.1],
        rates: o.rate ?? [2, 20],
        requests: o.requests,
        rounds: o.rounds,
        seed: o.seed,
        outputTokens,
        queryTemplate: o.queryTemplate,
        poolBytes,
        maxBatch: o.maxBatch,
        temperature: o.temperature,
        sampleMs: o.sampleMs,
        url: o.url,
        apiKey: o.apiKey ?? process.env.KVLAB_API_KEY,
        log: (line) => process.stderr.write(`bench serve: ${line}\n`),
      });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) {
        mkdirSync(o.out, { recursive: true });
        writeAtomic(join(o.out, 'serve.json'), text);
        for (const [file, svg] of Object.entries(servePlots(entries))) writeAtomic(join(o.out, file), svg);
        process.stderr.write(`bench serve: wrote ${o.out}/serve.json and plots\n`);
      }
      process.stdout.write(text);
    });
}
