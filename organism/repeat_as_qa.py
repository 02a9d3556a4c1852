"""Writes repeat.jsonl rows as qa.jsonl rows, so `kvlab eval qa` scores the repeat family with the TS engine:
one question, "Repeat the previous context exactly.", whose answer is the context. With
`--query-template "{query}"` the prompt is then exactly the repeat prompt of data/README.md
(user = context + "\\n\\nRepeat the previous context exactly."), and QA's exact match
(response.strip() == answer) is the repeat exact match (dev contexts carry no surrounding whitespace).

    python3 organism/repeat_as_qa.py data/dev/repeat.jsonl > /tmp/repeat-qa.jsonl
    npx tsx src/cli/main.ts eval qa --data /tmp/repeat-qa.jsonl --query-template "{query}" -n 620 --method kvzip --ratio 1
"""
import json
import sys

REQUEST = 'Repeat the previous context exactly.'


def main():
    if len(sys.argv) != 2:
        raise SystemExit('usage: repeat_as_qa.py REPEAT_JSONL > QA_JSONL')
    path = sys.argv[1]
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ('id', 'context', 'context_tokens'):
                if key not in row:
                    raise SystemExit(f'{path}:{n}: missing field "{key}"')
            if row['context'] != row['context'].strip():
                raise SystemExit(f'{path}:{n}: context has surrounding whitespace; QA exact match would differ from repeat exact match (row {row["id"]})')
            print(json.dumps({'id': row['id'], 'context': row['context'], 'context_tokens': row['context_tokens'],
                              'questions': [REQUEST], 'answers': [row['context']]}))


if __name__ == '__main__':
    main()
