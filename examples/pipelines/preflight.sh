#!/bin/sh
# Gate a vLLM deploy on `qwenprep check --json`.
#
#   MODEL=Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 OUT=/models/q480-1m TP=8 \
#     sh examples/pipelines/preflight.sh && qwenprep serve /models/q480-1m --tp 8
#
# Steps: patch MODEL to CONTEXT into the overlay OUT (idempotent: an identical overlay is kept),
# run every pre-flight check, keep the JSON report, print the failing checks, and exit with
# qwenprep's own code: 0 ready, 1 a check failed (do not deploy), 2 bad invocation, 3 cannot
# proceed. Extra arguments go to `qwenprep check` (e.g. --gpus 8 --gpu H200,
# --kv-memory 61.31GiB, --no-engine).
#
# MODEL is a checkpoint directory or a repo id already in the Hugging Face cache: run
# `qwenprep fetch ORG/NAME` first on a fresh machine. The JSON report is read with python3
# (set PYTHON to another interpreter), not jq, so nothing beyond qwenprep's own needs is assumed.
set -eu

: "${MODEL:?set MODEL to a checkpoint directory or ORG/NAME[@rev]}"
: "${OUT:?set OUT to the overlay directory to create}"
CONTEXT="${CONTEXT:-1m}"
TP="${TP:-8}"
REPORT="${REPORT:-qwenprep-check.json}"
QWENPREP="${QWENPREP:-qwenprep}"
PYTHON="${PYTHON:-python3}"

# report WHAT: print part of the check report on stderr (error | failures | ok | summary).
report() {
    "$PYTHON" -c '
import json, sys
what, path = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"preflight: cannot read the report {path}: {e}")
checks = r.get("checks") or []
if what == "error":
    err = r.get("error") or {}
    print(err.get("message", ""), file=sys.stderr)
    if err.get("hint"):
        print("Hint: " + err["hint"], file=sys.stderr)
elif what == "failures":
    for c in checks:
        if c["status"] == "fail":
            print("  FAIL " + c["id"] + ": " + c["message"], file=sys.stderr)
elif what == "ok":
    sys.exit(0 if r.get("ok") is True else 1)
elif what == "summary":
    n = {s: sum(c["status"] == s for c in checks) for s in ("pass", "warn")}
    print("preflight: ready: %d checks passed, %d warnings" % (n["pass"], n["warn"]),
          file=sys.stderr)
' "$1" "$REPORT"
}

"$QWENPREP" patch "$MODEL" --context "$CONTEXT" --out "$OUT" --json >/dev/null

rc=0
"$QWENPREP" check "$OUT" --tp "$TP" --ep --json "$@" >"$REPORT" || rc=$?

if [ "$rc" -ge 2 ]; then
    echo "preflight: qwenprep check could not run (exit $rc):" >&2
    report error || true
    exit "$rc"
fi
# Belt and braces: the exit code and the report must agree before anything is deployed.
if [ "$rc" -ne 0 ] || ! report ok; then
    echo "preflight: NOT ready to serve $OUT:" >&2
    report failures
    exit 1
fi
report summary
