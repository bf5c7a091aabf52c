#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU (under 8 minutes): throughput and model
# FLOPs utilisation of ViT-B/16 finetune and dro_replay training steps at 224 px
# (random weights), evaluation throughput and peak memory, through clbench's Learner.
# Usage: bash bench/gpu_check.sh   (needs clbench's dependencies importable)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 bench/gpu_check.py --arch ViT-B-16 --batch 128 --steps 40 --host-data   # batches copied from host memory
python3 bench/gpu_check.py --arch ViT-B-16 --batch 128 --steps 40                # uint8 data resident on the GPU
python3 bench/gpu_check.py --arch ViT-B-16 --batch 256 --steps 40
python3 bench/gpu_check.py --arch ViT-B-16 --batch 128 --steps 40 --compile      # torch.compile'd encoders
