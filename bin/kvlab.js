#!/usr/bin/env node
// The installed package runs the compiled CLI (dist/). A source checkout (src/ beside bin/) runs the
// TypeScript sources through tsx, so what runs is always the code as it is now.
import { existsSync } from 'node:fs';

const source = new URL('../src/cli/main.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import(new URL('../dist/cli/main.js', import.meta.url).href);
}
