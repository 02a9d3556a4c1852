"""Times one training step's forward + backward three ways on the same checkpoint and rows, alternating: the
segment mask with recomputation above 512 tokens (the trainer before per-example attention), per-example attention
without recomputation (the trainer now), and per-example attention with recomputation; and checks that the first
two give the same loss and gradients. Prints one JSON line.

    /usr/bin/python3 organism/bench_step.py --run /work/organism-runs/main --step 3100 [--threads 1] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from model import segment_spans  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', required=True)
    ap.add_argument('--step', type=int, required=True, help='whose rows (the curriculum stage of that step)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--rounds', type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe, tok, model, ck = train.load_run(args.run)
    model.train()
    exs, rows, seq_len, stage = train.step_examples(recipe, args.step, tok)
    ids, tgt, pos, seg, _ = train.pack(exs, rows, seq_len, tok.specials['<|endoftext|>'])
    is_t = tgt >= 0

    def run(by_span, ckpt):
        model.zero_grad(set_to_none=True)
        t = time.time()
        loss = F.cross_entropy(model(ids, pos, seg, checkpoint_layers=ckpt, rows=is_t, by_span=by_span), tgt[is_t])
        loss.backward()
        return time.time() - t, float(loss), torch.cat([p.grad.flatten() for p in model.parameters()])

    arms = {'mask_recompute': (False, seq_len > 512), 'span': (True, False), 'span_recompute': (True, True)}
    _, l0, g0 = run(*arms['mask_recompute'])
    _, l1, g1 = run(*arms['span'])
    times = {k: [] for k in arms}
    for r in range(args.rounds):
        for k in list(arms)[r % 3:] + list(arms)[:r % 3]:
            times[k].append(run(*arms[k])[0])
    print(json.dumps({
        'checkpoint_step': ck['step'], 'rows_of_step': args.step, 'stage': stage['name'], 'seq_len': seq_len,
        'examples_per_row': [len(s) for s in segment_spans(seg)], 'threads': args.threads,
        'loss': [l0, l1], 'grad_max_abs_diff': float((g0 - g1).abs().max()),
        'median_s': {k: round(statistics.median(v), 3) for k, v in times.items()},
    }))


if __name__ == '__main__':
    main()
