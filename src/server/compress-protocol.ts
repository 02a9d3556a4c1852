import type { CompressionReport } from '../engine/context-session.ts';
import type { ContextSpec } from '../engine/conversation-context.ts';
import type { ReconstructionOptions } from '../engine/reconstruction-check.ts';
import type { Span } from '../model/prompt-layout.ts';
import type { Protection } from '../press/protect.ts';

/** What POST /v1/contexts asks the compressor for: everything a thread needs to rebuild and compress the context. */
export interface CompressRequest {
  spec: ContextSpec;
  method: string;
  ratio: number | 'auto';
  protection: Protection | undefined;
  auto: Omit<ReconstructionOptions, 'protection' | 'onProgress'>;
}

export interface CompressThreadRequest {
  id: number;
  request: CompressRequest;
}

export type CompressThreadReply =
  | { type: 'ready'; fingerprint: string }
  | { type: 'load-error'; message: string }
  /** `file`: the compressed cache as a context file's bytes (transferred, not copied). */
  | { type: 'done'; id: number; report: CompressionReport; ids: number[]; prefix: Span; context: Span; file: Uint8Array }
  | { type: 'error'; id: number; message: string };
