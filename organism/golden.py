"""golden.json for a Hugging Face folder, computed by this package's own PyTorch forward pass (fp32, bf16
weights upcast, no KV cache): the independent reference the TS engine's golden tests compare against.

Same prompts, positions and layout as the golden.json shipped with v0: for each prompt the token ids, the
top-10 logits at positions floor(n/4), floor(n/2), floor(3n/4) and n-1, and the greedy continuation
(stops before <|im_end|>, at most 64 tokens).

    python3 organism/golden.py --model models/kvlab-tiny-chat [--out FILE] [--prompts FILE]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Tokenizer  # noqa: E402
from model import load_hf  # noqa: E402

DESCRIPTION = ('fp32 forward of model.safetensors (bf16 weights upcast to fp32), no KV-cache tricks; logits positions '
               'are 0-based indices into input_ids; greedy continuation stops at <|im_end|> (not included) or 64 tokens.')
IM_END = 2047
MAX_NEW = 64


def golden_positions(n):
    return [n // 4, n // 2, 3 * n // 4, n - 1]


@torch.no_grad()
def greedy(model, ids, max_new=MAX_NEW, stop=IM_END):
    """Greedy continuation by full recomputation each step; returns (new ids, stopped on stop token)."""
    seq = list(ids)
    out = []
    for _ in range(max_new):
        logits = model(torch.tensor([seq]))[0, -1]
        nxt = int(torch.argmax(logits))
        if nxt == stop:
            return out, True
        out.append(nxt)
        seq.append(nxt)
    return out, False


@torch.no_grad()
def golden_entry(model, tok, name, text):
    ids = tok.encode(text)
    logits = model(torch.tensor([ids]))[0]
    entries = []
    for pos in golden_positions(len(ids)):
        row = logits[pos].to(torch.float64)
        # Ties broken by the lower id, as the TS test sorts them.
        order = sorted(range(row.shape[0]), key=lambda i: (-float(row[i]), i))[:10]
        entries.append({'position': pos, 'top10_ids': order, 'top10_logits': [round(float(row[i]), 5) for i in order]})
    gen, stopped = greedy(model, ids)
    return {'name': name, 'text': text, 'input_ids': ids, 'n_tokens': len(ids), 'logits': entries,
            'greedy_ids': gen, 'greedy_text': tok.decode(gen), 'stopped_on_eos': stopped}


def build_golden(model_dir, prompts):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_hf(model_dir).eval()
    tok = Tokenizer(os.path.join(model_dir, 'tokenizer.json'))
    return {'description': DESCRIPTION, 'model_dir': '.',
            'prompts': [golden_entry(model, tok, p['name'], p['text']) for p in prompts]}


def write_json_atomic(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', required=True, help='Hugging Face folder (config.json, model.safetensors, tokenizer.json)')
    ap.add_argument('--prompts', help='golden.json whose prompt names and texts to reuse (default: MODEL/golden.json)')
    ap.add_argument('--out', help='where to write (default: MODEL/golden.json)')
    args = ap.parse_args()
    src = args.prompts or os.path.join(args.model, 'golden.json')
    with open(src, encoding='utf-8') as f:
        prompts = [{'name': p['name'], 'text': p['text']} for p in json.load(f)['prompts']]
    torch.set_num_threads(1)
    g = build_golden(args.model, prompts)
    out = args.out or os.path.join(args.model, 'golden.json')
    write_json_atomic(out, g)
    print(f'wrote {out}: ' + ', '.join(f'{p["name"]} ({p["n_tokens"]} tokens, greedy {len(p["greedy_ids"])})' for p in g['prompts']))


if __name__ == '__main__':
    main()
