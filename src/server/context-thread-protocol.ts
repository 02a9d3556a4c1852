import type { CompressionReport } from '../engine/context-session.ts';
import type { ContextSpec } from '../engine/conversation-context.ts';
import type { ReconstructionOptions } from '../engine/reconstruction-check.ts';
import type { InspectData } from '../inspect/inspect-data.ts';
import type { Span } from '../model/prompt-layout.ts';
import type { Protection } from '../press/protect.ts';

/** What POST /v1/contexts asks the context worker for: everything a thread needs to rebuild and compress the context. */
export interface CompressRequest {
  spec: ContextSpec;
  method: string;
  ratio: number | 'auto';
  protection: Protection | undefined;
  auto: Omit<ReconstructionOptions, 'protection' | 'onProgress'>;
}

/** What /inspect/{id} asks for: a stored context re-scored with the method and protection it was compressed under. */
export interface InspectRequest {
  spec: ContextSpec;
  method: string;
  ratio: number;
  /** The stored protection label (describeProtection's form). */
  protect: string;
}

/** The inspector page's data and the data.json of the stored ratio. */
export interface InspectResult {
  data: InspectData;
  json: object;
}

export type ContextThreadRequest = { id: number; kind: 'compress'; request: CompressRequest } | { id: number; kind: 'inspect'; request: InspectRequest };

export type ContextThreadReply =
  | { type: 'ready'; fingerprint: string }
  | { type: 'load-error'; message: string }
  /** `file`: the compressed cache as a context file's bytes (transferred, not copied). */
  | { type: 'compressed'; id: number; report: CompressionReport; ids: number[]; prefix: Span; context: Span; file: Uint8Array }
  | { type: 'inspected'; id: number; result: InspectResult }
  | { type: 'error'; id: number; message: string };
