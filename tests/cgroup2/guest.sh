#!/bin/bash
# Runs inside the cgroup v2 lane's VM, chrooted into the host's root (read-only 9p under a
# tmpfs overlay; tests/cgroup2/init), from the run.sh scripts/test-cgroup2 writes into the
# results dir (which this guest mounts writable). Records the cgroup fs type and the kernel,
# then runs the pytest selection NDE_CGROUP2_TESTS with a JUnit report into the results dir.
set -uo pipefail
results="${NDE_RESULTS:?}"
cd "${NDE_REPO:?}"
fs="$(stat -f -c %T /sys/fs/cgroup)"
echo "$fs" > "$results/fstype"
uname -r > "$results/kernel"
cat /sys/fs/cgroup/cgroup.controllers > "$results/controllers" 2>/dev/null
echo "guest: kernel $(uname -r), /sys/fs/cgroup is $fs ($(cat "$results/controllers")), $(nproc) CPUs"
if [ "$fs" != cgroup2fs ]; then
  echo "guest: /sys/fs/cgroup is not cgroup2fs"
  exit 90
fi
# Nomad 1.6.1 reads its cgroup mode from /proc/self/mountinfo; it is cgroup2 here. The
# E2E harness writes under /tmp (tmpfs); agent logs go back to the host.
export NDE_E2E_NO_BUILD=1 NDE_E2E_LOG_DIR="$results/e2e-logs"
# shellcheck disable=SC2086
"${NDE_PYTHON:-python3}" -m pytest -v -rfE -p no:cacheprovider --color=no --durations=0 \
  --junitxml="$results/junit.xml" -o junit_family=xunit2 ${NDE_CGROUP2_TESTS:?} </dev/null
