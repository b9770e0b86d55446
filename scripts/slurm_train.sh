#!/usr/bin/env bash
# Multi-node PRNet training under SLURM: one torchrun launcher per node, one rank per GPU.
#
#   sbatch --nodes=2 --gres=gpu:4 scripts/slurm_train.sh runs/prnet-ddp [extra train options]
#
# The same command resumes after a pre-emption or a time-limit kill (--resume starts fresh
# when RUN/last.pt does not exist yet); SLURM's SIGTERM before the kill makes the trainer
# write a checkpoint. Requeue with `#SBATCH --requeue` or by re-submitting.
#SBATCH --job-name=prnet
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --output=%x-%j.log
set -euo pipefail

root="$(cd "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
run="${1:-runs/prnet-ddp}"
shift || true
gpus_per_node="${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
if [ "${gpus_per_node}" -lt 1 ]; then
    echo "no GPU on this node: use one CPU process per node (--nproc_per_node=1)" >&2
    gpus_per_node=1
fi
head_node="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
port="${PRN_RDZV_PORT:-29500}"

cd "$root"
# srun starts one launcher per node; torchrun's c10d rendezvous on the head node joins them.
srun --kill-on-bad-exit=1 .venv/bin/python -m torch.distributed.run \
    --nnodes="${SLURM_NNODES}" \
    --nproc_per_node="${gpus_per_node}" \
    --rdzv-id="${SLURM_JOB_ID}" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="${head_node}:${port}" \
    --max-restarts=0 \
    -m prn_blender.training train \
    --shards cache/targets/shards \
    --out "${run}" \
    --resume \
    --num-workers 4 \
    --dist-timeout-s 600 \
    "$@"
