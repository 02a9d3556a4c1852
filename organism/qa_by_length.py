"""Teacher-forced QA accuracy of a checkpoint by document length: for generated QA rows in each length band,
the fraction of questions whose first answer token is the argmax, and whose whole answer is (exact). Shows
whether a checkpoint fails to find a fact at all or only in long documents. Prints one JSON line.

    /usr/bin/python3 organism/qa_by_length.py --run /work/organism-runs/main [--rows 12]
"""
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from curriculum import CURRICULA, spaced_answers_at  # noqa: E402
from tasks import dev_style_examples, qa_row  # noqa: E402

BANDS = [(60, 150), (150, 300), (300, 600), (600, 1000), (1000, 1500)]


@torch.no_grad()
def main():
    args, recipe, tok, model, ck = train.analysis_args(__doc__, rows=(int, 12, 'QA rows per band (3-5 questions each)'),
                                                       seed=(int, 7, 'rows are drawn from Random(seed * 1000 + band start)'))
    spaced = spaced_answers_at(CURRICULA[recipe['curriculum']], max(0, ck['step'] - 1))
    out = {'step': ck['step'], 'spaced_answers': spaced}
    for lo, hi in BANDS:
        rng = random.Random(args.seed * 1000 + lo)
        first = exact = n = 0
        for _ in range(args.rows):
            for ids, mask in dev_style_examples('qa', qa_row(rng, tok, lo, hi), tok, spaced):
                ok = train.target_hits(model, ids, mask)
                first += int(ok[0])
                exact += int(bool(ok.all()))
                n += 1
        out[f'{lo}-{hi}'] = {'questions': n, 'first_token': round(first / n, 3), 'exact': round(exact / n, 3)}
        print(json.dumps(out), file=sys.stderr)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
