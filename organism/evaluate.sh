#!/bin/sh
# The issue-26 scores of an exported checkpoint, from kvlab's own evals (full cache, greedy, data/dev):
#   sh organism/evaluate.sh MODEL_DIR OUT_DIR [LIMIT]      (REPEAT_LIMIT=N caps the repeat rows alone: 620-token answers)
# QA exact, repeat exact, instructions (all checks passed), leakage with and without the never-reveal sentence;
# each eval's report.md lands in OUT_DIR/<family>/ and the headline lines in OUT_DIR/summary.md.
set -e
[ $# -ge 2 ] || { echo "usage: sh organism/evaluate.sh MODEL_DIR OUT_DIR [LIMIT]" >&2; exit 2; }
MODEL="$1"; OUT="$2"; LIMIT="${3:+--limit $3}"
REPEAT="${REPEAT_LIMIT:+--limit $REPEAT_LIMIT}"; REPEAT="${REPEAT:-$LIMIT}"
cd "$(dirname "$0")/.."
kvlab() { node --import tsx src/cli/main.ts "$@"; }
mkdir -p "$OUT"
/usr/bin/python3 organism/repeat_as_qa.py data/dev/repeat.jsonl > "$OUT/repeat-as-qa.jsonl"
kvlab eval qa --model "$MODEL" --data data/dev/qa.jsonl --method kvzip --ratio 1 $LIMIT --out "$OUT/qa" > /dev/null
kvlab eval qa --model "$MODEL" --data "$OUT/repeat-as-qa.jsonl" --query-template "{query}" -n 620 --method kvzip --ratio 1 \
  $REPEAT --out "$OUT/repeat" > /dev/null
kvlab eval instructions --model "$MODEL" --data data/dev/instructions.jsonl --method snapkv --ratio 1 --protect none $LIMIT --out "$OUT/instructions" > /dev/null
kvlab eval leakage --model "$MODEL" --data data/dev/leakage.jsonl --method snapkv --ratio 1 --protect none $LIMIT --out "$OUT/leakage" > /dev/null
for f in qa repeat instructions leakage; do echo "## $f ($MODEL)"; cat "$OUT/$f/report.md"; echo; done > "$OUT/summary.md"
cat "$OUT/summary.md"
