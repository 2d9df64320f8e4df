#!/usr/bin/env bash
# Grapheme-to-phoneme on CMUdict with two models trained in one hour on 2 cores: two runs of
# recipes/g2p-cmudict.toml (stress-free, length-grouped batches, 50,000 steps, seeds 1337 and
# 4242 unless SEEDS) train side by side, one thread each (two single-threaded runs get more
# steps out of 2 cores than one run on both); the second learns to write right to left
# (`data.reverse_target`). Then the test words are decoded by both together: each proposes its
# 4 best (beam 4), and the candidate with the best mean log-probability under both wins
# (bidirectional rescoring). REVERSE_B=0 trains two left-to-right runs instead, decoded as a
# step-by-step ensemble (the renormalised mean of their log-probabilities).
#
#   bench/g2p_ensemble.sh [OUT_PREFIX]     # default runs/g2p-ens: runs/g2p-ens-a, runs/g2p-ens-b
#
# Prints the wall time of both trainings and each run's time inside training steps (from its
# metrics.jsonl), then the JSON of `eval seq2seq` for each model alone (greedy) and for the pair
# (greedy and beam 4). FF overrides the binary (default: target/release/ferroformer, built if
# missing); STEPS the steps of each run (default 50000; fewer for a quick check of the script);
# SEEDS the two runs' seeds (default "1337 4242").
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-runs/g2p-ens}
ff=${FF:-target/release/ferroformer}
[ -x "$ff" ] || cargo build --release
common=(--recipe recipes/g2p-cmudict.toml --set data.stress=false
        --set train.group_by_length=true --set train.steps="${STEPS:-50000}" --set train.eval_interval=$(( (${STEPS:-50000} + 1) / 2 )))
read -r seed_a seed_b <<< "${SEEDS:-1337 4242}"
start=$(date +%s)
"$ff" --quiet --threads 1 pretrain "${common[@]}" --set train.seed="$seed_a" \
    --set train.out_dir="$prefix-a" > "$prefix-a.log" 2>&1 &
a=$!
"$ff" --quiet --threads 1 pretrain "${common[@]}" --set train.seed="$seed_b" \
    --set data.reverse_target="$([ "${REVERSE_B:-1}" = 1 ] && echo true || echo false)" \
    --set train.out_dir="$prefix-b" > "$prefix-b.log" 2>&1 &
b=$!
wait $a || { echo "run a failed; see $prefix-a.log" >&2; exit 1; }
wait $b || { echo "run b failed; see $prefix-b.log" >&2; exit 1; }
echo "wall time of both trainings: $(( $(date +%s) - start )) s"
for r in a b; do
    python3 -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1]) if "\"elapsed_s\"" in l]; print(sys.argv[2], "seconds in training steps (validation excluded):", round(max(r["elapsed_s"] for r in rows)))' \
        "$prefix-$r/metrics.jsonl" "$r"
    echo "$r alone (greedy): $("$ff" --quiet --json eval seq2seq --model "$prefix-$r" --split test)"
done
ens=(--model "$prefix-a" --model "$prefix-b")
echo "pair (greedy): $("$ff" --quiet --json eval seq2seq "${ens[@]}" --split test)"
echo "pair (beam 4): $("$ff" --quiet --json eval seq2seq "${ens[@]}" --split test --beam 4)"
