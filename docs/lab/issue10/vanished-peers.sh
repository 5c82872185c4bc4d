#!/bin/bash
# Kept as run in issue 10 (see docs/benchmarks.md, "Robustness"); loopback only.
# usage: run.sh BIN ; vanished-peer measurement
B=$1; cd /tmp/dp; rm -rf t base fresh later v1 v2 v3 out* *.json *.err share.out; 
CLASSE_HOME=/tmp/dp/t $B share lesson --bind 127.0.0.1:0 --no-discovery --max-upload 20MB/s --stats /tmp/dp/tstats.json > share.out 2> share.err & SP=$!
for i in $(seq 1 50); do [ -s share.out ] && break; sleep 0.2; done
T=$(head -1 share.out); K=$(CLASSE_HOME=/tmp/dp/t $B id 2>/dev/null | head -1)
f() { CLASSE_HOME=/tmp/dp/$1 timeout 120 $B fetch "$T" --out /tmp/dp/out$1 --no-seed --bind 127.0.0.1:0 --no-discovery --trust "$K" --json > /tmp/dp/$1.json 2> /tmp/dp/$1.err; }
s=$(date +%s.%N); f base; echo "baseline $(echo "$(date +%s.%N) - $s" | bc)"
for i in 1 2 3; do f v$i & eval "V$i=\$!"; done
sleep 2; pkill -9 -f "CLASSE_HOME=/tmp/dp/v" ; for i in 1 2 3; do pkill -9 -f "out/tmp/dp/outv$i" ; done
for pid in $(pgrep -f "/tmp/dp/outv"); do kill -9 $pid; done
s=$(date +%s.%N); f fresh; echo "fresh-after-kill $(echo "$(date +%s.%N) - $s" | bc) rc=$?"
sleep 12; s=$(date +%s.%N); f later; echo "later $(echo "$(date +%s.%N) - $s" | bc)"
kill $SP; wait $SP 2>/dev/null
