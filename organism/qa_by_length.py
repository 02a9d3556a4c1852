"""Teacher-forced QA accuracy of a checkpoint by document length: for generated QA rows in each length band,
the fraction of questions whose first answer token is the argmax, and whose whole answer is (exact). Shows
whether a checkpoint fails to find a fact at all or only in long documents. Prints one JSON line.

    /usr/bin/python3 organism/qa_by_length.py --run /work/organism-runs/main [--rows 12]
"""
import argparse
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from curriculum import CURRICULA, stage_at  # noqa: E402
from tasks import dev_style_examples, qa_row  # noqa: E402

BANDS = [(60, 150), (150, 300), (300, 600), (600, 1000), (1000, 1500)]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', required=True)
    ap.add_argument('--rows', type=int, default=12, help='QA rows per band (3-5 questions each)')
    ap.add_argument('--seed', type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe, tok, model, ck = train.load_run(args.run)
    model.eval()
    spaced = stage_at(CURRICULA[recipe['curriculum']], max(0, ck['step'] - 1)).get('spaced_answers', False)
    out = {'step': ck['step'], 'spaced_answers': spaced}
    for lo, hi in BANDS:
        rng = random.Random(args.seed * 1000 + lo)
        first = exact = n = 0
        for _ in range(args.rows):
            for ids, mask in dev_style_examples('qa', qa_row(rng, tok, lo, hi), tok, spaced):
                logits = model(torch.tensor([ids[:-1]]))[0]
                pred = logits.argmax(-1).tolist()
                targets = [i for i in range(1, len(ids)) if mask[i]]
                ok = [pred[i - 1] == ids[i] for i in targets]
                first += ok[0]
                exact += all(ok)
                n += 1
        out[f'{lo}-{hi}'] = {'questions': n, 'first_token': round(first / n, 3), 'exact': round(exact / n, 3)}
        print(json.dumps(out), file=sys.stderr)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
