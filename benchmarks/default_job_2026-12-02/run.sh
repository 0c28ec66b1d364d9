#!/bin/bash
# README figures: the default main job from an empty cache, twice (determinism), then seeds 1 and 2.
. <venv>/bin/activate
export PYTHONPATH=<checkout>/src
cd <out>
run() { # name cache seed
  /usr/bin/time -v entropyctl train --out <out>/$1 --set seed=$3 --set trainer.threads=1 --set trainer.progress_bar=false > <out>/$1.log 2>&1
}
ENTROPYCTL_CACHE=<out>/cacheA run s0a A 0 &
ENTROPYCTL_CACHE=<out>/cacheB run s0b B 0 &
wait
ENTROPYCTL_CACHE=<out>/cacheA run s1 A 1 &
ENTROPYCTL_CACHE=<out>/cacheA run s2 A 2 &
wait
echo ALLDONE > <out>/done
