#!/usr/bin/env bash
# Run the suite with the clock shifted: every test starts at each instant below (pytest --clock,
# time-machine; the clock ticks on from there). Catches tests and code that depend on the hour,
# the date, or a month or year boundary. Tests whose code under test runs in subprocesses (the
# e2e tests, and those marked real_clock) keep the real clock there, so they are left out.
#   tests/clock_shift.sh [PYTEST ARGS...]     (make test-clock)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
INSTANTS=(
  "2027-01-04T00:00:30+00:00"   # just after midnight: a morning UTC (the old prune bug)
  "2027-01-04T11:59:50+00:00"   # just before noon
  "2027-01-04T23:59:55+00:00"   # just before midnight: the date changes during a test
  "2026-12-31T23:59:55+00:00"   # month and year boundary
  "2027-02-28T23:59:55+00:00"   # end of February
)
failed=0
out=$(mktemp -d)
for instant in "${INSTANTS[@]}"; do
  if "$PY" -m pytest -q -p no:cacheprovider --clock "$instant" --ignore tests/e2e -m "not slow and not browser and not real_clock" "$@" \
      >"$out/$instant.log" 2>&1; then
    echo "clock $instant: $(tail -1 "$out/$instant.log")"
  else
    grep -E '^(FAILED|ERROR)' "$out/$instant.log"
    echo "clock $instant: FAILED: $(tail -1 "$out/$instant.log") (full output: $out/$instant.log)"
    failed=1
  fi
done
exit $failed
