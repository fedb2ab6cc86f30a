#!/bin/bash
# Train on several nodes with Slurm: one torchrun per node, which starts one process per GPU.
#
#   sbatch examples/slurm_train.sh --optform=Deblur --compress=schedules/deblur/agp_prune.yaml
#   sbatch examples/slurm_train.sh --optform=Deblur --resume checkpoints/<run>/latest.pth   # continue
#
# Every argument goes to train.py. Adjust the #SBATCH lines to your cluster; NPROC_PER_NODE (default: the
# GPUs per node, 1 without GPUs) and RDZV_PORT (default 29500) may be set in the environment. Rank 0 (on the
# first node) writes the checkpoints and logs: give --checkpoint_dir / --logdir on a shared file system so
# a resumed job finds them from any node.
#SBATCH --job-name=imagegen-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
RDZV_PORT=${RDZV_PORT:-29500}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD_NODE:$RDZV_PORT" \
    train.py "$@"
