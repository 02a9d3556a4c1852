// kvlab serve speaks the OpenAI API: the official client talks to it unchanged. This starts a server on
// the embedded model inside this process (serve), compresses a context once over HTTP, and asks it
// a question through the openai package.
import OpenAI from 'openai';
import { serve } from 'kvlab';

const server = await serve({ port: 0, store: null }); // port 0: any free port; store null: in memory
await server.ready;
try {
  const baseURL = `${server.url}/v1`;
  const created = await fetch(`${baseURL}/contexts`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: 'Document:\nThe code of tean is 4242. The code of ruko is 1717.', method: 'kvzip', ratio: 0.5 }),
  });
  const context = (await created.json()) as { id: string; kept_ratio: number };
  console.log(`context ${context.id}: kept ${context.kept_ratio}`);

  const client = new OpenAI({ baseURL, apiKey: 'unused' });
  const reply = await client.chat.completions.create({
    model: 'kvlab-tiny-chat',
    messages: [{ role: 'user', content: 'Question: What is the code of tean?' }],
    max_tokens: 12,
    // kvlab's extension: answer on the stored compressed context.
    ...({ context: context.id } as object),
  });
  console.log(`answer from kvlab serve: ${JSON.stringify(reply.choices[0]!.message.content)}`);
} finally {
  await server.shutdown();
}
