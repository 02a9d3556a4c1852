// `node --import ./test/helpers/import-trace.mjs ...`: appends every module URL the process resolves to the
// file named by KVLAB_IMPORT_TRACE, one per line (resolve hooks run on their own thread, so they write it).
import { register } from 'node:module';

register('./import-trace-hooks.mjs', { parentURL: import.meta.url, data: { file: process.env.KVLAB_IMPORT_TRACE } });
