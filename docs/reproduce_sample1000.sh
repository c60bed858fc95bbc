#!/usr/bin/env bash
# Regenerates every table and figure of docs/RESULTS_sample1000.md with the library alone.
#   DATA: CIFAR-10 images (default ../shared/data/cifar10_sample.npz)
#   ACC:  the NB201 accuracy table (default ../shared/data/nb201_accuracies.csv)
#   OUT:  where scores, the scan database, tables and figures go (default results/)
# Scoring is resumable (the scan database keeps every score): rerun after an interruption.
# One single-threaded process per score on a 2-core CPU; about 40 min for the batch-32 part.
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10_sample.npz}
ACC=${ACC:-../shared/data/nb201_accuracies.csv}
OUT=${OUT:-results}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
COMMON=(--n-archs 1000 --seed 0 --batch-size 32 --no-augment --fixed-batch --data "$DATA" --accuracies "$ACC"
        --db "$OUT/scan.db" --quiet)

# Rank correlations of the 1,000-architecture sample, batch 32, both scores.
nwot-fast evaluate --method jacob_cov "${COMMON[@]}" --scores-out "$OUT/b32_jacob_cov.csv" &
nwot-fast evaluate --method hook_logdet "${COMMON[@]}" --scores-out "$OUT/b32_hook_logdet.csv" &
wait

# Correlation and search tables (table mode, N = 10 and 100, 500 runs), Figures 1, 3 and 6.
nwot-fast report --scores jacob_cov="$OUT/b32_jacob_cov.csv" --scores hook_logdet="$OUT/b32_hook_logdet.csv" \
    --accuracies "$ACC" --data "$DATA" --search-ns 10,100 --runs 500 --seed 0 \
    --out "$OUT/report.md" --figures-dir "$OUT/figures"

# Batch 128 on the first 353 architectures of the same sample.
for m in jacob_cov hook_logdet; do
    nwot-fast evaluate --method "$m" --n-archs 353 --seed 0 --batch-size 128 --no-augment --fixed-batch \
        --data "$DATA" --accuracies "$ACC" --db "$OUT/scan.db" --quiet --scores-out "$OUT/b128_$m.csv" &
done
wait
for m in jacob_cov hook_logdet; do
    nwot-fast evaluate --scores-in "$OUT/b128_$m.csv" --method "$m" --accuracies "$ACC"
    nwot-fast evaluate --scores-in "$OUT/b32_$m.csv" --method "$m" --accuracies "$ACC" --n-archs 353 --seed 0
done

# The whole-space rescore-mode check: 50 runs of N = 10, hook_logdet, batch 32.
python - "$DATA" "$ACC" <<'PY'
import sys
from nwot_fast.scoring import ScoreConfig
from nwot_fast.searchtable import search_table
config = ScoreConfig(method="hook_logdet", data=sys.argv[1], batch_size=32, augment=False, fixed_batch=True)
print(search_table(config, sys.argv[2], Ns=(10,), runs=50, mode="rescore").format_text())
PY
