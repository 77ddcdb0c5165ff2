#!/usr/bin/env bash
# Memory and undefined-behaviour check of the C++ kernels: builds unified_vision._C with AddressSanitizer and
# UndefinedBehaviorSanitizer (UV_SANITIZE=1, see setup.py; CPU only) in a scratch copy of the working tree, then runs the
# tests that call the kernels (tests/test_ops.py, test_unihead.py, test_frameworks.py) against that build, with the
# sanitizer runtimes preloaded into Python. Any report (out-of-bounds access, use after free, signed overflow, ...)
# stops the run: the sanitizers halt on their first error and their reports are printed here.
# Usage: kernels/sanitize.sh [pytest arguments]      e.g. kernels/sanitize.sh -k deform_roi_pool
# Needs gcc's libasan and libubsan (Debian: libgcc-12-dev, installed with g++). About 4 minutes on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
ASAN=$(c++ -print-file-name=libasan.so)
UBSAN=$(c++ -print-file-name=libubsan.so)
for lib in "$ASAN" "$UBSAN"; do
    [ -f "$lib" ] || { echo "sanitize.sh: $lib not found; install gcc's sanitizer runtimes (libgcc-12-dev)" >&2; exit 3; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if git -C "$ROOT" rev-parse --is-inside-work-tree > /dev/null 2>&1; then     # the files git sees (not ignored ones)
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$WORK" -xf -
else                                                                        # an unpacked copy without git
    tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude='*.so' -cf - . | tar -C "$WORK" -xf -
fi
cd "$WORK"
echo "sanitize.sh: building unified_vision._C with ASan and UBSan in $WORK"
if ! UV_SANITIZE=1 "$PY" setup.py build_ext --inplace > build.log 2>&1; then
    tail -40 build.log >&2; exit 2
fi
mkdir -p "$WORK/reports"
set +e
LD_PRELOAD="$ASAN $UBSAN" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$WORK/reports/asan" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$WORK/reports/ubsan" \
PYTHONPATH="$WORK" HF_HUB_OFFLINE=1 \
"$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_unihead.py tests/test_frameworks.py \
    -k "not cuda_sources_compile" "$@"
rc=$?
set -e
if compgen -G "$WORK/reports/*" > /dev/null; then
    echo "sanitize.sh: sanitizer reports:" >&2
    cat "$WORK"/reports/* >&2
    exit 1
fi
exit $rc
