#!/usr/bin/env bash
# Free-sample grammar of the tiny model against width, tokens and context, on the one-episode
# world (docs/training.md, "Width, tokens and context"). Each run trains on an exact token budget,
# then draws 300 free samples (temperature 1, no lock) and lints them. Resumable: a finished run
# is skipped.
#
#   bash bench/grammar_levers.sh [DIR]        # default DIR: runs/grammar; ≈ 40 min at 18k tokens/s
set -euo pipefail
G=${1:-runs/grammar}
P=${PREALIGN:-.venv/bin/prealign}
mkdir -p "$G"
echo '{"min_episodes": 1, "max_episodes": 1}' > "$G/one_episode.json"
[ -d "$G/world" ] || $P world --out "$G/world" --docs 40000 --variant tagged --scheme seed --seed 0 --config "$G/one_episode.json"
[ -d "$G/tok" ] || $P tokenizer train --data "$G/world" --out "$G/tok" --vocab-size 2048
run() {  # NAME, then `prealign train` flags
  local name=$1; shift
  [ -f "$G/$name/grammar.json" ] && return
  local resume=(); [ -f "$G/$name/checkpoint.pt" ] && [ ! -f "$G/$name/prealign_model.json" ] && resume=(--resume)
  [ -f "$G/$name/prealign_model.json" ] || $P train --data "$G/world" --tokenizer "$G/tok" --out "$G/$name" --exact-budget \
      --threads 2 --packing aligned --no-progress "$@" "${resume[@]}"
  $P eval grammar --model "$G/$name" --samples 300 --max-new-tokens 1024 --json "$G/$name/grammar.json"
}
run tiny_4m --max-tokens 4000000
run w256_4m --max-tokens 4000000 --hidden-size 256 --n-heads 8 --intermediate-size 768
run tiny_12m --max-tokens 12000000
run c512_4m --max-tokens 4000000 --seq-len 512 --batch-size 8
