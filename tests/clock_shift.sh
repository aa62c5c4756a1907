#!/usr/bin/env bash
# Run the suite with the clock shifted: every test starts at each instant below (pytest --clock,
# time-machine; the clock ticks on from there). Catches tests and code that depend on the hour,
# the date, or a month or year boundary. The e2e tests run the gateway in subprocesses, which
# keep the real clock, so they are left out.
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
for instant in "${INSTANTS[@]}"; do
  if "$PY" -m pytest -q -p no:cacheprovider --clock "$instant" --ignore tests/e2e -m "not slow and not browser" "$@" \
      >/tmp/clock_shift.out 2>&1; then
    echo "clock $instant: $(tail -1 /tmp/clock_shift.out)"
  else
    grep -E '^(FAILED|ERROR)' /tmp/clock_shift.out
    echo "clock $instant: FAILED: $(tail -1 /tmp/clock_shift.out)"
    failed=1
  fi
done
exit $failed
