import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface RenderOptions {
  addGenerationPrompt: boolean;
  /** Extra template variables (e.g. date_string, enable_thinking). */
  extra?: Record<string, unknown>;
}

const SENTINEL = '\u0000KVLAB_USER_CONTENT\u0000';

/** A model's chat template (Jinja, from tokenizer_config.json), rendered with @huggingface/jinja. */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    private readonly specials: { bos_token?: string; eos_token?: string },
  ) {
    this.template = new Template(source);
  }

  render(messages: ChatMessage[], opts: RenderOptions): string {
    return this.template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt,
      bos_token: this.specials.bos_token ?? '',
      eos_token: this.specials.eos_token ?? '',
      ...opts.extra,
    });
  }

  /**
   * The template around a user message: prefix = everything before its content (system turn and user
   * header), suffix = everything after it (end of the user turn and the assistant header).
   */
  userTurnParts(system?: string, extra?: Record<string, unknown>): { prefix: string; suffix: string } {
    const messages: ChatMessage[] = [...(system !== undefined ? [{ role: 'system' as const, content: system }] : []), { role: 'user', content: SENTINEL }];
    const text = this.render(messages, { addGenerationPrompt: true, extra });
    const at = text.indexOf(SENTINEL);
    if (at < 0 || text.indexOf(SENTINEL, at + 1) >= 0) throw new Error('the chat template does not place the user content exactly once');
    return { prefix: text.slice(0, at), suffix: text.slice(at + SENTINEL.length) };
  }
}
