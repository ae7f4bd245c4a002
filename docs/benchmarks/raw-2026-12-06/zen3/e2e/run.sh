cd /work/main
for b in auto transformers; do
  /usr/bin/time -v .venv/bin/leafe eval configs/sokoban_quickstart.yaml output_dir=/tmp/e2e name=$b policy.backend=$b > /tmp/e2e-$b.log 2> /tmp/e2e-$b.time
done
