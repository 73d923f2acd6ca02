#!/usr/bin/env bash
# Runs the real-tokenizer cases (Llama 3, Qwen3, Mistral/Mixtral tokenizer.json against the ids
# Hugging Face's tokenizers gives) after fetching the files; fails unless all three ran and passed.
# Usage: run_real_tokenizer_test.sh <tokenizer_test binary> <repo root>
set -euo pipefail
test_bin=$1
repo_root=$2
dir=$(bash "$repo_root/scripts/install-real-tokenizers.sh")
out=$(SWITCHYARD_REAL_TOKENIZERS_DIR="$dir" "$test_bin" --gtest_filter='Real/*' 2>&1) || {
  echo "$out"; exit 1; }
echo "$out" | tail -5
if grep -q "SKIPPED" <<<"$out" || ! grep -q "\[  PASSED  \] 3 tests" <<<"$out"; then
  echo "run_real_tokenizer_test: expected 3 real-tokenizer tests to run and pass" >&2
  exit 1
fi
