#!/bin/sh
# npm run sweeps: the compression sweeps on a model (the embedded one unless MODEL is set), each into OUT/<study>
# with results.json, samples.csv, report.md and plots; rerunning resumes unfinished studies.
#   qa            every single method x ratios 1, 0.5, 0.3, 0.2, 0.1 and auto on data/dev/qa.jsonl
#   repeat        the repeat family through eval qa (one question: the repeat request), full cache
#   instructions  every method x ratios, protection none and fair (per-span budgets)
#   leakage       every method x ratios, protection none, whitelist:defense, fair and both
#   quant-f32, quant-int4, quant-int2   kvzip at ratios 1 and 0.3 on f32, int4 and int2 KV caches (QA rows)
# QA_LIMIT, INS_LIMIT, LEAK_LIMIT, REPEAT_LIMIT cap the rows (default: all); METHODS overrides the method list.
set -e
cd "$(dirname "$0")/.."
MODEL="${MODEL:-models/kvlab-tiny-chat}"
OUT="${OUT:-out/sweeps}"
RATIOS="${RATIOS:-1,0.5,0.3,0.2,0.1}"
kvlab() { node --import tsx src/cli/main.ts "$@"; }
limit() { [ -n "$1" ] && echo "--limit $1" || true; }
resume() { [ -f "$1/partial.jsonl" ] && echo "--resume" || true; }
METHODS="${METHODS:-$(kvlab methods | awk '{print $1}' | grep -v ':' | paste -sd, -)}"
mkdir -p "$OUT"
echo "sweeps of $MODEL into $OUT; methods: $METHODS"

node -e '
const fs = require("fs");
for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n")) {
  if (!line.trim()) continue;
  const r = JSON.parse(line);
  console.log(JSON.stringify({ id: r.id, context: r.context, context_tokens: r.context_tokens,
    questions: ["Repeat the previous context exactly."], answers: [r.context.trim()] }));
}' data/dev/repeat.jsonl > "$OUT/repeat-as-qa.jsonl"
kvlab eval qa --model "$MODEL" --data "$OUT/repeat-as-qa.jsonl" --query-template "{query}" -n 620 --method kvzip --ratio 1 \
  $(limit "$REPEAT_LIMIT") --out "$OUT/repeat" $(resume "$OUT/repeat")
kvlab eval qa --model "$MODEL" --data data/dev/qa.jsonl --method "$METHODS" --ratio "$RATIOS,auto" \
  $(limit "$QA_LIMIT") --out "$OUT/qa" $(resume "$OUT/qa")
kvlab eval instructions --model "$MODEL" --data data/dev/instructions.jsonl --method "$METHODS" --ratio "$RATIOS" \
  --protect none --protect fair $(limit "$INS_LIMIT") --out "$OUT/instructions" $(resume "$OUT/instructions")
kvlab eval leakage --model "$MODEL" --data data/dev/leakage.jsonl --method "$METHODS" --ratio "$RATIOS" \
  --protect none --protect whitelist:defense --protect fair --protect both $(limit "$LEAK_LIMIT") --out "$OUT/leakage" $(resume "$OUT/leakage")
for dt in f32 int4 int2; do
  kvlab eval qa --model "$MODEL" --data data/dev/qa.jsonl --method kvzip --ratio 1,0.3 --kv-dtype "$dt" \
    $(limit "$QA_LIMIT") --out "$OUT/quant-$dt" $(resume "$OUT/quant-$dt")
done
for s in repeat qa instructions leakage quant-f32 quant-int4 quant-int2; do echo "## $s"; cat "$OUT/$s/report.md"; echo; done > "$OUT/README.md"
echo "wrote $OUT/README.md"
