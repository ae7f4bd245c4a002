#!/bin/bash
cd /work/main
for b in auto transformers; do
  echo "start $b $(date)" >> /tmp/e2e/log
  /usr/bin/time -v .venv/bin/leafe eval configs/sokoban_quickstart.yaml output_dir=/tmp/e2e name=$b policy.backend=$b > /tmp/e2e/$b.out 2> /tmp/e2e/$b.err
  echo "end $b rc=$? $(date)" >> /tmp/e2e/log
done
