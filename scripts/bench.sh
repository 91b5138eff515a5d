#!/usr/bin/env bash
# Runs the benchmarks and prints one table: each figure, its target, whether
# it is met, and the machine. Usage, from the repository root:
#
#   bash scripts/bench.sh            # every bench (Apache Kafka is installed first)
#   bash scripts/bench.sh core memory   # only these benches
#
# Each bench prints its figures as lines
#   RESULT<TAB>figure<TAB>value<TAB>unit<TAB>target<TAB>met|missed|-
# and its full log goes to target/bench-logs/<bench>.log. Sizes can be set
# with the benches' own variables (E2E_MESSAGES, RESTORE_MESSAGES,
# MEMORY_MESSAGES, ...; see the head of each file in benches/).
# Benchmarks measure; they do not fail on a missed target (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

all=(core process memory restore bare_consumer end_to_end backlog archive)
if [ "$#" -gt 0 ]; then benches=("$@"); else benches=("${all[@]}"); fi

for b in "${benches[@]}"; do
  case "$b" in
    restore|bare_consumer|end_to_end|backlog) bash scripts/install-kafka.sh >/dev/null; break ;;
  esac
done

logs=target/bench-logs
mkdir -p "$logs"
results="$logs/results.tsv"
: >"$results"
status=0
for b in "${benches[@]}"; do
  echo "== cargo bench --bench $b" >&2
  if cargo bench --locked --bench "$b" >"$logs/$b.log" 2>&1; then
    grep -P '^RESULT\t' "$logs/$b.log" | cut -f2- | sed "s/^/$b\t/" >>"$results" || true
  else
    echo "bench $b failed: see $logs/$b.log" >&2
    printf '%s\tbench failed (see %s)\t-\t-\t-\tfailed\n' "$b" "$logs/$b.log" >>"$results"
    status=1
  fi
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
echo
echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
{
  printf 'bench\tfigure\tvalue\tunit\ttarget\tstatus\n'
  cat "$results"
} | column -t -s $'\t'
exit "$status"
