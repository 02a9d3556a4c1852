import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ChatTemplate } from './chat-template.ts';
import { CheckpointError } from './checkpoint-errors.ts';
import { readRegularText } from './regular-file.ts';

function readJson(path: string, what: string): Record<string, unknown> {
  const text = readRegularText(path, what, (msg) => new CheckpointError(msg));
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${what} is not valid JSON: ${path} (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CheckpointError(`${path}: expected a JSON object`);
  return json as Record<string, unknown>;
}

function tokenText(t: unknown): string | undefined {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof (t as { content?: unknown }).content === 'string') return (t as { content: string }).content;
  return undefined;
}

/** tokenizer.json through @huggingface/tokenizers, plus the chat template and stop ids of the checkpoint. */
export class KvTokenizer {
  readonly eosIds: number[];
  private chatTemplate: ChatTemplate | null = null;

  constructor(
    private readonly tok: Tokenizer,
    private readonly config: Record<string, unknown>,
    eosIds: number[],
    readonly dir: string,
  ) {
    this.eosIds = eosIds;
  }

  /** Token ids of text; special-token strings in it map to their ids; no BOS/EOS is added. */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  idOf(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  tokenOf(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  get chat(): ChatTemplate {
    if (!this.chatTemplate) {
      const source = this.config.chat_template;
      const text = typeof source === 'string' ? source : Array.isArray(source) ? (source.find((t) => t?.name === 'default')?.template as string | undefined) : undefined;
      if (!text) throw new Error(`no chat_template in ${join(this.dir, 'tokenizer_config.json')}; use --raw to feed prompts as is`);
      this.chatTemplate = new ChatTemplate(text, { bos_token: tokenText(this.config.bos_token), eos_token: tokenText(this.config.eos_token) }, join(this.dir, 'tokenizer_config.json'));
    }
    return this.chatTemplate;
  }
}

/**
 * The tokenizer, checked by encoding and decoding a probe string: @huggingface/tokenizers reads its JSON
 * lazily, so a structural error (a model without a vocab, a malformed merge) would otherwise surface as a
 * TypeError deep in the first encode, naming no file.
 */
function buildTokenizer(json: Record<string, unknown>, config: Record<string, unknown>, path: string): Tokenizer {
  const model = json.model as Record<string, unknown> | undefined;
  if (typeof model !== 'object' || model === null || Array.isArray(model)) throw new CheckpointError(`${path}: no "model" object (not a tokenizer.json?)`);
  if (typeof model.vocab !== 'object' || model.vocab === null) throw new CheckpointError(`${path}: model.vocab is missing or not an object/list`);
  if (model.merges !== undefined && !Array.isArray(model.merges)) throw new CheckpointError(`${path}: model.merges is not a list`);
  try {
    const tok = new Tokenizer(json as never, config as never);
    tok.decode(tok.encode('kvlab probe: Hello, world! 123', { add_special_tokens: false }).ids);
    return tok;
  } catch (e) {
    throw new CheckpointError(`${path}: not a usable tokenizer (${(e as Error).message})`);
  }
}

export function loadTokenizer(dir: string): KvTokenizer {
  const tokJson = readJson(join(dir, 'tokenizer.json'), 'tokenizer.json');
  const config = existsSync(join(dir, 'tokenizer_config.json')) ? readJson(join(dir, 'tokenizer_config.json'), 'tokenizer_config.json') : {};
  const tok = buildTokenizer(tokJson, config, join(dir, 'tokenizer.json'));
  const eos = new Set<number>();
  const addIds = (v: unknown) => {
    for (const x of Array.isArray(v) ? v : [v]) if (typeof x === 'number') eos.add(x);
  };
  for (const f of ['generation_config.json', 'config.json']) {
    if (existsSync(join(dir, f))) addIds(readJson(join(dir, f), f).eos_token_id);
  }
  const eosText = tokenText(config.eos_token);
  if (eosText) addIds(tok.token_to_id(eosText));
  for (const end of ['<|im_end|>', '<|eot_id|>', '<|end_of_text|>', '<|endoftext|>']) {
    const id = tok.token_to_id(end);
    if (id !== undefined && typeof config.chat_template === 'string' && config.chat_template.includes(end)) eos.add(id);
  }
  if (eos.size === 0) throw new Error(`no end-of-sequence token found for ${dir} (generation_config.json, config.json, tokenizer_config.json)`);
  return new KvTokenizer(tok, config, [...eos].sort((a, b) => a - b), dir);
}
