"""Export a training checkpoint to a Hugging Face folder kvlab loads (--model DIR):
config.json, model.safetensors (bf16), the tokenizer files of the shipped model, and golden.json computed
by golden.py's PyTorch forward pass from the exported bf16 weights.

    python3 organism/export.py --ckpt organism/runs/main/ckpt.pt --out /tmp/tiny-candidate

The folder is built beside --out and renamed into place, so an interrupted export leaves no half folder.
"""
import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden import build_golden, write_json_atomic  # noqa: E402
from model import Llama, hf_config, write_safetensors_bf16  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(HERE, '..', 'models', 'kvlab-tiny-chat')
TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json']


def export(ckpt_path, out_dir, golden_prompts):
    ck = torch.load(ckpt_path)
    for key in ('model', 'shape', 'step'):
        if key not in ck:
            raise SystemExit(f'{ckpt_path}: not a trainer checkpoint (no {key!r})')
    model = Llama(ck['shape'])
    model.load_state_dict(ck['model'])
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
        json.dump(hf_config(ck['shape']), f, indent=2)
    write_safetensors_bf16(os.path.join(tmp, 'model.safetensors'), model.hf_state())
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(SHIPPED, name), os.path.join(tmp, name))
    with open(golden_prompts, encoding='utf-8') as f:
        prompts = [{'name': p['name'], 'text': p['text']} for p in json.load(f)['prompts']]
    write_json_atomic(os.path.join(tmp, 'golden.json'), build_golden(tmp, prompts))
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return ck['step'], ck.get('tokens_seen'), model.num_parameters()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--golden-prompts', default=os.path.join(SHIPPED, 'golden.json'),
                    help='golden.json whose prompts to reuse (default: the shipped model\'s)')
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    step, seen, n = export(args.ckpt, args.out, args.golden_prompts)
    print(f'exported step {step} ({seen} tokens seen, {n / 1e6:.2f}M parameters) to {args.out}')


if __name__ == '__main__':
    main()
