#!/usr/bin/env bash
# CPU seconds per process group over a window, for profiling a bench run:
#   scripts/cpu-split.sh 10    (while courier-bench runs in another shell)
# Groups: postgres, rabbitmq (beam.smp), redis, courier-api, courier-worker,
# courier-bench (load generator and fakes), other.
set -euo pipefail
window=${1:-10}
snap() {
  for s in /proc/[0-9]*/stat; do
    read -r line < "$s" 2>/dev/null || continue
    comm=${line#*(}; comm=${comm%%)*}
    rest=${line##*) }
    set -- $rest
    echo "$comm ${12} ${13}"
  done | awk '{
    c=$1; g="other";
    if (c ~ /^postgres/) g="postgres"; else if (c ~ /beam|erl_child|inet_gethost/) g="rabbitmq";
    else if (c ~ /redis/) g="redis"; else if (c ~ /courier-api/) g="courier-api";
    else if (c ~ /courier-worke/) g="courier-worker"; else if (c ~ /courier-bench/) g="courier-bench";
    t[g]+=$2+$3 } END { for (g in t) print g, t[g] }'
}
a=$(snap); sleep "$window"; b=$(snap)
hz=$(getconf CLK_TCK)
join <(echo "$a" | sort) <(echo "$b" | sort) | awk -v hz="$hz" -v w="$window" '{ d=($3-$2)/hz; tot+=d; printf "%-16s %6.2f s  (%4.0f%% of one core)\n", $1, d, 100*d/w } END { printf "%-16s %6.2f s over %d s\n", "total", tot, w }'
