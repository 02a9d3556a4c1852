import type { ChatMessage } from '../model/chat-template.ts';
import { badRequest } from './api-error.ts';

/** A chat completion request, as validated. */
export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  maxTokens: number | null;
  temperature: number;
  topP: number;
  seed: number | undefined;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** kvlab's extension: the id of a stored context the messages continue. */
  context: string | null;
  /** kvlab's extension: decoding-time compression of the reply, `METHOD:BUDGET:EVERY`. */
  decodeCompress: string | null;
}

export interface ContextRequest {
  text: string | null;
  system: string | null;
  messages: ChatMessage[] | null;
  method: string;
  /** A kept fraction, or 'auto' (the smallest candidate whose compressed cache still reconstructs the context). */
  ratio: number | 'auto';
  /**
   * With ratio 'auto': the reconstruction check's threshold, mode and candidates (defaults when absent), and
   * the rule: the server's negative-sample predictor (`kvlab serve --auto-predictor`, the default when it has
   * one) or the threshold; `maxProbability` overrides the predictor's bar.
   */
  auto: { threshold?: number; mode?: 'relative' | 'absolute'; candidates?: number[]; rule?: 'predictor' | 'threshold'; maxProbability?: number };
  protect: string | null;
}

type Json = Record<string, unknown>;

export function asObject(body: unknown): Json {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw badRequest('the request body must be a JSON object');
  return body as Json;
}

function optionalNumber(o: Json, key: string, min: number, max: number, integer = false): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw badRequest(`${key} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], got ${JSON.stringify(v)}`, key, 'invalid_value');
  }
  return v;
}

function optionalString(o: Json, key: string): string | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') throw badRequest(`${key} must be a string, got ${JSON.stringify(v)}`, key, 'invalid_type');
  return v;
}

/** OpenAI message content: a string, or an array of text parts (other part types are not served). */
function contentText(v: unknown, param: string): string {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    return v
      .map((p, i) => {
        if (!p || typeof p !== 'object' || (p as Json).type !== 'text' || typeof (p as Json).text !== 'string') {
          throw badRequest(`${param}[${i}] must be a text part {"type": "text", "text": ...}; other content types are not supported`, `${param}[${i}]`, 'invalid_type');
        }
        return (p as Json).text as string;
      })
      .join('');
  }
  throw badRequest(`${param} must be a string or an array of text parts`, param, 'invalid_type');
}

export function parseMessages(v: unknown, param = 'messages'): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw badRequest(`${param} must be a non-empty array`, param, 'invalid_type');
  return v.map((m, i) => {
    const p = `${param}[${i}]`;
    if (!m || typeof m !== 'object') throw badRequest(`${p} must be an object`, p, 'invalid_type');
    const role = (m as Json).role;
    const mapped = role === 'developer' ? 'system' : role;
    if (mapped !== 'system' && mapped !== 'user' && mapped !== 'assistant') {
      throw badRequest(`${p}.role must be system, developer, user or assistant, got ${JSON.stringify(role)}`, `${p}.role`, 'invalid_value');
    }
    return { role: mapped, content: contentText((m as Json).content, `${p}.content`) };
  });
}

export function parseChatRequest(body: unknown): ChatRequest {
  const o = asObject(body);
  const model = optionalString(o, 'model');
  if (!model) throw badRequest('model is required', 'model', 'missing_required_parameter');
  const messages = parseMessages(o.messages);
  optionalNumber(o, 'n', 1, 1, true); // one choice per request is all this server returns
  const maxTokens = optionalNumber(o, 'max_completion_tokens', 1, 1e9, true) ?? optionalNumber(o, 'max_tokens', 1, 1e9, true) ?? null;
  const stopRaw = o.stop;
  let stop: string[] = [];
  if (typeof stopRaw === 'string') stop = [stopRaw];
  else if (Array.isArray(stopRaw)) {
    if (stopRaw.length > 4 || !stopRaw.every((s) => typeof s === 'string')) throw badRequest('stop must be a string or an array of up to 4 strings', 'stop', 'invalid_value');
    stop = stopRaw as string[];
  } else if (stopRaw !== undefined && stopRaw !== null) throw badRequest('stop must be a string or an array of up to 4 strings', 'stop', 'invalid_type');
  const stream = o.stream === undefined || o.stream === null ? false : o.stream;
  if (typeof stream !== 'boolean') throw badRequest('stream must be a boolean', 'stream', 'invalid_type');
  const so = o.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw badRequest('stream_options must be an object', 'stream_options', 'invalid_type');
  const includeUsage = Boolean(so && (so as Json).include_usage);
  if (so && !stream) throw badRequest('stream_options is only allowed when stream is true', 'stream_options', 'invalid_value');
  return {
    model,
    messages,
    maxTokens,
    temperature: optionalNumber(o, 'temperature', 0, 2) ?? 1,
    topP: optionalNumber(o, 'top_p', 0, 1) ?? 1,
    seed: optionalNumber(o, 'seed', -(2 ** 53), 2 ** 53, true),
    stop,
    stream,
    includeUsage,
    context: optionalString(o, 'context'),
    decodeCompress: optionalString(o, 'decode_compress'),
  };
}

export function parseContextRequest(body: unknown): ContextRequest {
  const o = asObject(body);
  const text = optionalString(o, 'text');
  const system = optionalString(o, 'system');
  const messages = o.messages === undefined || o.messages === null ? null : parseMessages(o.messages);
  if ((text === null) === (messages === null)) throw badRequest('give exactly one of text or messages', text === null ? 'text' : 'messages', 'invalid_value');
  if (messages && system !== null) throw badRequest('system goes with text; put a system message in messages instead', 'system', 'invalid_value');
  if (typeof o.ratio === 'string' && o.ratio !== 'auto') throw badRequest(`ratio must be a number in [0, 1] or "auto", got ${JSON.stringify(o.ratio)}`, 'ratio', 'invalid_value');
  const ratio = o.ratio === 'auto' ? 'auto' : (optionalNumber(o, 'ratio', 0, 1) ?? 0.3);
  const autoRaw = o.auto;
  if (autoRaw !== undefined && autoRaw !== null && ratio !== 'auto') throw badRequest('auto options go with ratio "auto"', 'auto', 'invalid_value');
  return {
    text,
    system,
    messages,
    method: optionalString(o, 'method') ?? 'kvzip',
    ratio,
    auto: autoRaw === undefined || autoRaw === null ? {} : parseAutoOptions(autoRaw),
    protect: optionalString(o, 'protect'),
  };
}

/** `auto`: {threshold?: number in [0, 1], mode?: "relative" | "absolute", candidates?: ratios in [0, 1], rule?: "predictor" | "threshold", max_probability?: number in (0, 1]}. */
function parseAutoOptions(v: unknown): ContextRequest['auto'] {
  if (typeof v !== 'object' || Array.isArray(v)) throw badRequest('auto must be an object {threshold, mode, candidates}', 'auto', 'invalid_type');
  const o = v as Json;
  const known = ['threshold', 'mode', 'candidates', 'rule', 'max_probability'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw badRequest(`auto.${k} is not an option (${known.join(', ')})`, `auto.${k}`, 'invalid_value');
  const rule = o.rule;
  if (rule !== undefined && rule !== null && rule !== 'predictor' && rule !== 'threshold') throw badRequest(`auto.rule must be "predictor" or "threshold", got ${JSON.stringify(rule)}`, 'auto.rule', 'invalid_value');
  const p = o.max_probability;
  if (p !== undefined && p !== null && !(typeof p === 'number' && p > 0 && p <= 1)) throw badRequest(`auto.max_probability must be a number in (0, 1], got ${JSON.stringify(p)}`, 'auto.max_probability', 'invalid_value');
  const mode = o.mode;
  if (mode !== undefined && mode !== null && mode !== 'relative' && mode !== 'absolute') throw badRequest(`auto.mode must be "relative" or "absolute", got ${JSON.stringify(mode)}`, 'auto.mode', 'invalid_value');
  const c = o.candidates;
  if (c !== undefined && c !== null && (!Array.isArray(c) || c.length === 0 || !c.every((r) => typeof r === 'number' && r >= 0 && r <= 1))) {
    throw badRequest('auto.candidates must be a non-empty array of ratios in [0, 1]', 'auto.candidates', 'invalid_value');
  }
  const t = o.threshold;
  if (t !== undefined && t !== null && !(typeof t === 'number' && t >= 0 && t <= 1)) throw badRequest(`auto.threshold must be a number in [0, 1], got ${JSON.stringify(t)}`, 'auto.threshold', 'invalid_value');
  const threshold = typeof t === 'number' ? t : undefined;
  return {
    ...(threshold !== undefined ? { threshold } : {}),
    ...(mode ? { mode: mode as 'relative' | 'absolute' } : {}),
    ...(c ? { candidates: c as number[] } : {}),
    ...(rule ? { rule: rule as 'predictor' | 'threshold' } : {}),
    ...(typeof p === 'number' ? { maxProbability: p } : {}),
  };
}
