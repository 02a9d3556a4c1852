import { conversationContext } from '../engine/conversation-context.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import { inspectConversation } from '../inspect/collect.ts';
import { inspectionJson } from '../inspect/export-json.ts';
import { parseProtection } from '../press/protect.ts';
import type { InspectRequest, InspectResult } from './context-thread-protocol.ts';

/**
 * A stored context keeps its kept rows, not its scores: the inspector re-scores it with the method and applied
 * protection it was compressed with, and opens at the stored ratio, where its keep set is the stored one.
 */
export async function inspectStored(lm: LoadedModel, r: InspectRequest): Promise<InspectResult> {
  const ctx = conversationContext(lm, r.spec);
  const ins = await inspectConversation(lm, ctx, { methods: [r.method], ratio: r.ratio, protection: parseProtection(r.protect), protectLabel: r.protect });
  return { data: ins.data, json: inspectionJson(ins, [ins.data.ratio]) };
}
