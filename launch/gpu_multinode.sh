#!/usr/bin/env bash
# arjax on 2 GPU nodes x 8 GPUs: one process per node, each driving its node's 8 GPUs.
# arjax's multi-host init reads the three ARJAX_* variables below (TPU slices need none of them).
# Run it on both nodes, from the repository root:
#   NODE_RANK=0 bash launch/gpu_multinode.sh   # on host0
#   NODE_RANK=1 bash launch/gpu_multinode.sh   # on the other node
set -euo pipefail

export ARJAX_COORDINATOR=host0:1234   # process 0's host and a free port, reachable from both nodes
export ARJAX_NUM_PROCESSES=2
export ARJAX_PROCESS_ID=${NODE_RANK:?set NODE_RANK to 0 on host0 and 1 on the other node}
# The workdir must be one directory that both nodes see (a shared filesystem).
arjax train --config configs/imagenet.py:d16 --workdir /shared/runs/in256_d16

# SLURM: `sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8` with this as the job step; the
# single quotes make each task read its own SLURM_PROCID:
#   srun bash -c 'export ARJAX_COORDINATOR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):1234
#     export ARJAX_NUM_PROCESSES=$SLURM_NTASKS ARJAX_PROCESS_ID=$SLURM_PROCID
#     arjax train --config configs/imagenet.py:d16 --workdir /shared/runs/in256_d16'
