"""What a checkpoint answers to dev QA questions (PyTorch greedy, the dev prompt): right, a value of the asked
entity's other attribute, a value of the asked attribute of another entity, another value of the document, or a
value found nowhere in the document. Prints one JSON line.

    /usr/bin/python3 organism/qa_errors.py --run /work/organism-runs/main [--rows 8]
"""
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from tasks import SYSTEM_DEFAULT, chat_prompt  # noqa: E402

DEV_QA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'data', 'dev', 'qa.jsonl')


def kind_of(pred, answer, attr, entity, facts):
    if pred == answer:
        return 'right'
    if any(v == pred and e == entity for (a, e), v in facts.items()):
        return 'same entity'
    if any(v == pred and a == attr for (a, e), v in facts.items()):
        return 'same attribute'
    return 'in document' if pred in facts.values() else 'not in document'


@torch.no_grad()
def main():
    args, _, tok, model, ck = train.analysis_args(__doc__, rows=(int, 8, 'first dev QA rows to ask'),
                                                  max_tokens=(int, 10, 'greedy tokens per answer at most'))
    end = tok.specials['<|im_end|>']
    with open(DEV_QA) as f:
        rows = [json.loads(line) for line in f][:args.rows]
    kinds = {k: 0 for k in ('right', 'same entity', 'same attribute', 'in document', 'not in document')}
    for row in rows:
        facts = {(a, e): v for a, e, v in re.findall(r'The (\w+) of (\w+) is ([^.\n]+)\.', row['context'])}
        for q, answer in zip(row['questions'], row['answers']):
            attr, entity = re.match(r'What is the (\w+) of (\w+)\?', q).groups()
            ids = tok.encode(chat_prompt(SYSTEM_DEFAULT, row['context'] + '\n\nQuestion: ' + q))
            out = []
            for _ in range(args.max_tokens):
                nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
                if nxt == end:
                    break
                out.append(nxt)
            kinds[kind_of(tok.decode(out).strip(), answer, attr, entity, facts)] += 1
    print(json.dumps({'step': ck['step'], 'rows': args.rows, 'answers': kinds}))


if __name__ == '__main__':
    main()
