#!/bin/bash
# Kept as run in issue 10 (see docs/benchmarks.md, "Robustness"); loopback only.
# 40 pupils fetch 5 MB from one teacher on loopback, with or without --no-seed.
# usage: run.sh BIN MODE(noseed|seed) N
B=$1; MODE=$2; N=${3:-40}; D=/tmp/ns/$MODE; rm -rf $D; mkdir -p $D/lesson; head -c 5000000 /dev/urandom > $D/lesson/a.bin
CLASSE_HOME=$D/t $B share $D/lesson --bind 127.0.0.1:0 --no-discovery --stats $D/tstats.json > $D/share.out 2> $D/share.err & SP=$!
for i in $(seq 1 50); do [ -s $D/share.out ] && break; sleep 0.2; done
T=$(head -1 $D/share.out); K=$(CLASSE_HOME=$D/t $B id 2>/dev/null | head -1)
EXTRA=""; [ $MODE = noseed ] && EXTRA="--no-seed"
start=$(date +%s.%N); pids=()
for i in $(seq 1 $N); do
  ( CLASSE_HOME=$D/p$i timeout 300 $B fetch "$T" --out $D/out$i $EXTRA --bind 127.0.0.1:0 --no-discovery --trust "$K" --json > $D/p$i.json 2> $D/p$i.err; echo "$(echo "$(date +%s.%N) - $start" | bc) $?" > $D/p$i.done ) &
  pids+=($!)
done
# pupils who keep seeding never exit: wait for all outputs (bounded)
for t in $(seq 1 600); do c=$(ls $D/*.json 2>/dev/null | xargs -r grep -l '"root"' 2>/dev/null | wc -l); [ $c -ge $N ] && break; [ $MODE = noseed ] && [ $(ls $D/*.done 2>/dev/null | wc -l) -ge $N ] && break; sleep 0.5; done
python3 - $D $N <<'PY'
import json,sys,glob,statistics
D,N=sys.argv[1],int(sys.argv[2]); secs=[]
for f in glob.glob(D+'/p*.json'):
    try: secs.append(json.loads(open(f).readline())['seconds'])
    except Exception: pass
secs.sort(); print(f"done {len(secs)}/{N} median {statistics.median(secs):.1f}s last {secs[-1]:.1f}s" if secs else "none done")
PY
pkill -f "CLASSE_HOME=$D/p" 2>/dev/null; for p in "${pids[@]}"; do kill $p 2>/dev/null; done
for pid in $(pgrep -f "$D/out"); do kill $pid 2>/dev/null; done
sleep 1; kill $SP; wait $SP 2>/dev/null
python3 -c "
import json; d=json.load(open('$D/tstats.json')); t=d.get('traffic',d); print('teacher sent', t.get('sent_bytes') or t.get('sent') or list(t.keys())[:6])" 2>/dev/null
