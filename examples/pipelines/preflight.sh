#!/bin/sh
# Gate a vLLM deploy on `qwenprep check --json`.
#
#   MODEL=Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 OUT=/models/q480-1m TP=8 \
#     sh examples/pipelines/preflight.sh && qwenprep serve /models/q480-1m --tp 8
#
# Steps: patch MODEL to CONTEXT into the overlay OUT (idempotent: an identical overlay is kept),
# run every pre-flight check, keep the JSON report, print the failing checks, and exit with
# qwenprep's own code: 0 ready, 1 a check failed (do not deploy), 2 bad invocation, 3 cannot
# proceed. Extra arguments go to `qwenprep check` (e.g. --gpus 8 --gpu-memory 141GB,
# --kv-memory 61.31GiB, --no-engine).
set -eu

: "${MODEL:?set MODEL to a checkpoint directory or ORG/NAME[@rev]}"
: "${OUT:?set OUT to the overlay directory to create}"
CONTEXT="${CONTEXT:-1m}"
TP="${TP:-8}"
REPORT="${REPORT:-qwenprep-check.json}"
QWENPREP="${QWENPREP:-qwenprep}"

"$QWENPREP" patch "$MODEL" --context "$CONTEXT" --out "$OUT" --json >/dev/null

rc=0
"$QWENPREP" check "$OUT" --tp "$TP" --ep --json "$@" >"$REPORT" || rc=$?

if [ "$rc" -ge 2 ]; then
    echo "preflight: qwenprep check could not run (exit $rc):" >&2
    jq -r '.error.message // empty' "$REPORT" >&2 || true
    exit "$rc"
fi
# Belt and braces: the exit code and the report must agree before anything is deployed.
ok="$(jq -r '.ok' "$REPORT")"
if [ "$rc" -ne 0 ] || [ "$ok" != "true" ]; then
    echo "preflight: NOT ready to serve $OUT:" >&2
    jq -r '.checks[] | select(.status == "fail") | "  FAIL \(.id): \(.message)"' "$REPORT" >&2
    exit 1
fi
jq -r '"preflight: ready: \([.checks[] | select(.status == "pass")] | length) checks passed, " +
       "\([.checks[] | select(.status == "warn")] | length) warnings"' "$REPORT" >&2
