#!/usr/bin/env bash
# Prints the interpreter `make install` builds .venv with: $PYTHON where given, else the newest
# supported CPython on PATH (python3.13, python3.12, python3.11, then python3). An unsupported
# interpreter gets one line naming the versions that work, and exit status 1.
set -uo pipefail
SUPPORTED="3.11 3.12 3.13"

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
supported() { case " $SUPPORTED " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -n "${PYTHON:-}" ]; then
  v=$(version_of "$PYTHON") || v=""
  if [ -z "$v" ]; then
    echo "PYTHON=$PYTHON does not run; cgar_interp needs CPython ${SUPPORTED// /, }" >&2
    exit 1
  fi
  if ! supported "$v"; then
    echo "PYTHON=$PYTHON is Python $v; cgar_interp needs CPython ${SUPPORTED// /, } (make install PYTHON=python3.12, say)" >&2
    exit 1
  fi
  command -v "$PYTHON" || echo "$PYTHON"
  exit 0
fi
found=""
for candidate in python3.13 python3.12 python3.11 python3; do
  command -v "$candidate" >/dev/null 2>&1 || continue
  v=$(version_of "$candidate") || continue
  found="$found $candidate ($v)"
  if supported "$v"; then
    command -v "$candidate"
    exit 0
  fi
done
echo "no supported Python found (${found# }); cgar_interp needs CPython ${SUPPORTED// /, }: install one, or make install PYTHON=/path/to/python3.X" >&2
exit 1
