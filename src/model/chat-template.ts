import { KvlabError } from '../tensor/kvlab-error.ts';
import { Environment, Interpreter, Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface RenderOptions {
  addGenerationPrompt: boolean;
  /** Extra template variables (e.g. date_string, enable_thinking). */
  extra?: Record<string, unknown>;
}

/** A chat template that does not parse, loops past its limits, or renders without the messages. */
export class ChatTemplateError extends KvlabError {
  constructor(message: string) {
    super('chat_template', message);
  }
}

const SENTINEL = '\u0000KVLAB_USER_CONTENT\u0000';

/**
 * Bounds on one render: interpreter steps (a base plus a share per message: the templates of the supported
 * families take about 15-50 per message), items one range() may produce, characters of output.
 */
export const RENDER_LIMITS = { steps: 100_000, stepsPerMessage: 1_000, rangeItems: 100_000, chars: 64 * 1024 * 1024 };

// The Jinja interpreter has no budget of its own, so a template looping over range(1e8) would hang the
// process. Every render counts the interpreter's evaluation steps (and the output they build) against
// RENDER_LIMITS through this one wrapper; it is inert outside ChatTemplate.render.
let budget: { steps: number; limit: number; source: string } | null = null;
type Evaluate = (this: unknown, statement: unknown, env: unknown) => { type: string; value: unknown };
const proto = Interpreter.prototype as unknown as { evaluate: Evaluate };
const evaluate = proto.evaluate;
proto.evaluate = function (statement, env) {
  if (budget && ++budget.steps > budget.limit) {
    throw new ChatTemplateError(`${budget.source}: chat_template rendering exceeded ${budget.limit} steps (a loop that does not end?)`);
  }
  const out = evaluate.call(this, statement, env);
  if (budget && typeof out?.value === 'string' && out.value.length > RENDER_LIMITS.chars) {
    throw new ChatTemplateError(`${budget.source}: chat_template rendering produced more than ${RENDER_LIMITS.chars} characters`);
  }
  return out;
};

// The global range() builds its whole list before a loop starts; during a render it is swapped for one
// that refuses lists longer than RENDER_LIMITS.rangeItems.
const envProto = Environment.prototype as unknown as { set: (this: unknown, name: string, value: unknown) => unknown };
const envSet = envProto.set;
envProto.set = function (name, value) {
  return envSet.call(this, name, budget && name === 'range' ? boundedRange(budget.source) : value);
};

/** range() as Jinja has it, refusing to build more than RENDER_LIMITS.rangeItems items. */
function boundedRange(source: string) {
  return (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new ChatTemplateError(`${source}: range() step must not be zero`);
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if (!(n <= RENDER_LIMITS.rangeItems)) throw new ChatTemplateError(`${source}: chat_template asks for range() of ${n} items (limit ${RENDER_LIMITS.rangeItems})`);
    // A loop with an empty body takes no evaluation steps, so every item a range yields counts as one.
    if (budget && (budget.steps += n) > budget.limit) {
      throw new ChatTemplateError(`${source}: chat_template rendering exceeded ${budget.limit} steps (a loop that does not end?)`);
    }
    return Array.from({ length: n }, (_, i) => start + i * step);
  };
}

/** What of a message's content a template must reproduce: trimmed, and for reasoning replies the answer after </think>. */
function visibleContent(content: string): string {
  const at = content.lastIndexOf('</think>');
  return (at >= 0 ? content.slice(at + '</think>'.length) : content).trim();
}

/**
 * A model's chat template (Jinja, from tokenizer_config.json), rendered with @huggingface/jinja under
 * step, range and size limits. `origin` names the file it came from in every error.
 */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    private readonly specials: { bos_token?: string; eos_token?: string },
    readonly origin = 'chat template',
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`${origin}: chat_template does not parse (${(e as Error).message})`);
    }
  }

  render(messages: ChatMessage[], opts: RenderOptions): string {
    let text: string;
    budget = { steps: 0, limit: RENDER_LIMITS.steps + RENDER_LIMITS.stepsPerMessage * messages.length, source: this.origin };
    try {
      text = this.template.render({
        messages,
        add_generation_prompt: opts.addGenerationPrompt,
        bos_token: this.specials.bos_token ?? '',
        eos_token: this.specials.eos_token ?? '',
        ...opts.extra,
      });
    } catch (e) {
      if (e instanceof ChatTemplateError) throw e;
      throw new ChatTemplateError(`${this.origin}: chat_template failed to render (${(e as Error).message})`);
    } finally {
      budget = null;
    }
    for (const [i, m] of messages.entries()) {
      const needle = visibleContent(m.content);
      if (needle && !text.includes(needle)) {
        throw new ChatTemplateError(`${this.origin}: chat_template renders without the content of message ${i} (${m.role}); the prompt would not hold it`);
      }
    }
    return text;
  }

  /**
   * The template around a user message: prefix = everything before its content (system turn and user
   * header), suffix = everything after it (end of the user turn and the assistant header).
   */
  userTurnParts(system?: string, extra?: Record<string, unknown>): { prefix: string; suffix: string } {
    const messages: ChatMessage[] = [...(system !== undefined ? [{ role: 'system' as const, content: system }] : []), { role: 'user', content: SENTINEL }];
    const text = this.render(messages, { addGenerationPrompt: true, extra });
    const at = text.indexOf(SENTINEL);
    if (at < 0 || text.indexOf(SENTINEL, at + 1) >= 0) throw new ChatTemplateError(`${this.origin}: the chat template does not place the user content exactly once`);
    return { prefix: text.slice(0, at), suffix: text.slice(at + SENTINEL.length) };
  }
}
