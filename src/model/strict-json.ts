/**
 * The first key that appears twice in one object of a JSON text (at any depth), or null. JSON.parse keeps
 * the last of duplicate keys silently; formats whose readers must agree on one meaning (safetensors
 * headers) refuse them instead. The text must already be valid JSON.
 */
export function firstDuplicateKey(text: string): { key: string; path: string } | null {
  type Frame = { keys: Set<string> | null; expectKey: boolean; name: string };
  const stack: Frame[] = [];
  let lastKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top?.keys && top.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.keys.has(key)) return { key, path: stack.map((f) => f.name).filter(Boolean).join('.') };
        top.keys.add(key);
        top.expectKey = false;
        lastKey = key;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      const parent = stack[stack.length - 1];
      const name = parent?.keys ? lastKey : '';
      stack.push({ keys: c === '{' ? new Set() : null, expectKey: c === '{', name });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',') {
      const top = stack[stack.length - 1];
      if (top?.keys) top.expectKey = true;
    }
  }
  return null;
}
