#!/usr/bin/env bash
# `make test-pythons`: for each supported CPython found here (python3.X on PATH, or a pyenv
# install of 3.X), a venv .venv-pythons/3.X built from requirements.lock exactly as `make
# install` builds .venv (scripts/install_lock.py, then the project editable), then the default
# tier (`pytest -m "not slow"`) in it. Prints one line per interpreter: torch build, install
# seconds, test seconds, pytest's closing line. Exit status 1 if any interpreter failed.
# PYTHONS="python3.12 /opt/py/bin/python3.13" chooses the interpreters instead.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
OUT=.venv-pythons
mkdir -p "$OUT"

runs() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
interpreters=()
if [ -n "${PYTHONS:-}" ]; then
  read -ra interpreters <<< "$PYTHONS"
else
  for v in 3.11 3.12 3.13; do
    if [ "$(runs "python$v")" = "$v" ]; then
      interpreters+=("$(command -v "python$v")")
    elif command -v pyenv >/dev/null 2>&1; then
      for p in "$(pyenv root)"/versions/"$v".*/bin/python"$v"; do
        [ "$(runs "$p")" = "$v" ] && { interpreters+=("$p"); break; }
      done
    fi
  done
fi
[ "${#interpreters[@]}" -gt 0 ] || { echo "test-pythons: no supported interpreter found" >&2; exit 1; }

summary=()
failed=0
for py in "${interpreters[@]}"; do
  v=$(runs "$py") || { summary+=("$py: does not run"); failed=1; continue; }
  venv="$OUT/$v"
  log="$OUT/$v.log"
  echo "test-pythons: Python $v ($py) -> $venv, log $log"
  t0=$(date +%s)
  {
    rm -rf "$venv" && "$py" -m venv "$venv" \
      && "$venv/bin/python" scripts/install_lock.py requirements.lock \
      && "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  } > "$log" 2>&1
  installed=$?
  t1=$(date +%s)
  if [ "$installed" -ne 0 ]; then
    summary+=("Python $v: install FAILED after $((t1 - t0)) s (see $log)")
    failed=1
    continue
  fi
  torch=$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)
  "$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider >> "$log" 2>&1
  status=$?
  t2=$(date +%s)
  closing=$(grep -E '(passed|failed|error)' "$log" | tail -1)
  [ "$status" -eq 0 ] || failed=1
  summary+=("Python $v: torch $torch; install $((t1 - t0)) s; default tier $((t2 - t1)) s; pytest exit $status: $closing")
done
echo
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
exit "$failed"
