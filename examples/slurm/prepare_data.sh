#!/usr/bin/env bash
# Prepare a big dataset with a SLURM job array of N parts plus one dependent merge job.
#
#   N=32 examples/slurm/prepare_data.sh SRC OUT [prepare-data options]
#   e.g. N=32 examples/slurm/prepare_data.sh --dataset imagenet --split train /datasets/imagenet data/in1k
#
# OUT must be on a filesystem every node sees. A failed part can be resubmitted on its own
# (sbatch --array=K examples/slurm/prepare_part.sbatch N SRC OUT ...): finished shards are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
N=${N:-8}
SBATCH=${SBATCH:-sbatch}
array=$($SBATCH --parsable --array="0-$((N - 1))" "$here/prepare_part.sbatch" "$N" "$@")
array=${array%%;*}   # --parsable prints "jobid[;cluster]"
merge=$($SBATCH --parsable --dependency="afterok:$array" "$here/prepare_merge.sbatch" "$@")
echo "parts: job array $array (0-$((N - 1))); merge: job ${merge%%;*} after all parts succeed"
