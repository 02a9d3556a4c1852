"""Where a checkpoint's copies go wrong: teacher-forced accuracy of the `repeat` family's copied tokens (at dev
length), by position in the copy, by how often the previous token occurs in the prompt (1: at most once, 2: 2-3,
3: 4-10, 4: more than 10; an induction head that matches one token is ambiguous when it occurs often) and by copy
length. Prints one JSON line.

    /usr/bin/python3 organism/copy_errors.py --run /work/organism-runs/main [--examples 24]
"""
import collections
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from tasks import family_example  # noqa: E402


def occurrence_bucket(count):
    return 1 if count <= 1 else 2 if count <= 3 else 3 if count <= 10 else 4


@torch.no_grad()
def main():
    args, _, tok, model, ck = train.analysis_args(__doc__, examples=(int, 24, 'repeat rows at dev length'),
                                                  seed=(int, 12345, 'seed of the rows'))
    rng = random.Random(args.seed)
    tables = {k: collections.defaultdict(lambda: [0, 0]) for k in ('position_100', 'previous_token_occurrences', 'length_150')}
    for _ in range(args.examples):
        ids, mask = family_example('repeat', rng, tok, 1.0)[0]
        pred = model(torch.tensor([ids]))[0][:-1].argmax(-1).tolist()
        start = mask.index(1)
        length = sum(mask)
        for j in range(start, len(ids)):
            if not mask[j]:
                continue
            ok = int(pred[j - 1] == ids[j])
            for name, key in (('position_100', min((j - start) // 100, 6)),
                              ('previous_token_occurrences', occurrence_bucket(ids[:start].count(ids[j - 1]))),
                              ('length_150', min(length // 150, 4))):
                tables[name][key][0] += ok
                tables[name][key][1] += 1
    print(json.dumps({'step': ck['step'], 'examples': args.examples, **{
        name: {str(k): {'accuracy': round(a / n, 3), 'tokens': n} for k, (a, n) in sorted(t.items())}
        for name, t in tables.items()}}))


if __name__ == '__main__':
    main()
