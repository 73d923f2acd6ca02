#!/usr/bin/env bash
# The quick-start demo: makes a small Mixture-of-Experts checkpoint (random weights, real
# Hugging Face format) and streams a generation from it with the single-process engine.
set -euo pipefail
build_dir=${1:-build}
bin="$build_dir/bin"
model_dir="$build_dir/demo-model"

if [[ ! -f "$model_dir/config.json" ]]; then
  echo "== making a small qwen3_moe checkpoint in $model_dir"
  "$bin/switchyard-make-model" --family qwen3_moe --out "$model_dir" --seed 7
fi

echo "== generating with switchyard-run (CPU backend)"
echo "   (random weights: the text is gibberish, but every token went through the full MoE engine)"
echo
"$bin/switchyard-run" --model "$model_dir" --prompt "Switchyard routes every token to its experts." \
  --max-tokens 48 --temperature 0.8 --seed 1 --stats
