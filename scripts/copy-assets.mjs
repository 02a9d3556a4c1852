// Copies the files the compiled code reads at run time (the inspector page's browser scripts and styles)
// from src/ to dist/, beside the modules that read them.
import { cpSync, readdirSync } from 'node:fs';

const from = new URL('../src/inspect/browser/', import.meta.url);
const to = new URL('../dist/inspect/browser/', import.meta.url);
for (const name of readdirSync(from)) {
  if (/\.(js|css)$/.test(name)) cpSync(new URL(name, from), new URL(name, to));
}
