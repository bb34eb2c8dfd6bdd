"""Price and throughput tables (data only): reference GPUs for training, CPU instances for serving.

Read by the config (to validate ``roi.gpu`` and ``roi.serving_instance``), by the training dry
run (tunewise.training.estimate) and by the decision's cost lines (tunewise.decision.decide). Figures carry their
source and the day they were read; prices move, so check before relying on them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CPU_INSTANCES", "FLOPS_PER_TOKEN", "GPU_UTILISATION", "REFERENCE_GPUS"]

# Reference GPUs: peak dense bf16 tensor TFLOPs (no sparsity) and an on-demand hourly price.
# Figures as read on 2026-11-24 from public pages; prices move, so check before relying on them.
REFERENCE_GPUS: list[dict[str, Any]] = [
    # A10G (AWS g5): 70 TFLOPs bf16 per Baseten, "NVIDIA A10 vs A10G for ML model inference"
    # (baseten.co/blog); $1.006/h: AWS EC2 on-demand price of g5.xlarge, us-east-1.
    {"gpu": "A10G", "peak_bf16_tflops": 70.0, "usd_per_hour": 1.006, "memory_gib": 24},
    # L4: 121 TFLOPs bf16 dense (242 with sparsity), NVIDIA L4 datasheet; $0.71/h: Google Cloud
    # g2-standard-4 (one L4) on-demand, us-central1.
    {"gpu": "L4", "peak_bf16_tflops": 121.0, "usd_per_hour": 0.71, "memory_gib": 24},
    # A100 40GB: 312 TFLOPs bf16 dense, NVIDIA A100 datasheet; $1.80/h: low end of the 2026
    # hyperscaler on-demand range ($1.80-2.25/GPU-h) quoted by yobitel.com's A100 knowledge base.
    {"gpu": "A100-40GB", "peak_bf16_tflops": 312.0, "usd_per_hour": 1.80, "memory_gib": 40},
    # H100 SXM: 989 TFLOPs bf16 dense (1,979 with sparsity), NVIDIA H100 datasheet; $2.31/h: the
    # per-GPU container price in FPT Cloud's AI Factory billing documentation example.
    {"gpu": "H100", "peak_bf16_tflops": 989.0, "usd_per_hour": 2.31, "memory_gib": 80},
]
# Model FLOPs utilisation assumed for small-batch fine-tuning of a small model: 35% is typical of
# well-tuned LLM training (PaLM reports 46% MFU at scale); small models and LoRA sit lower.
GPU_UTILISATION = 0.35
# Training FLOPs per token: full fine-tuning 6N (forward 2N, backward 4N: activation gradients 2N
# plus weight gradients 2N). LoRA skips the weight gradients of the frozen weights: about 4N
# (forward 2N + activation gradients 2N; the adapters add well under 1%).
FLOPS_PER_TOKEN = {"lora": 4, "encoder": 6}

# CPU instances that serve a model, smallest first. Latency measured on this machine (2 cores)
# scales by vCPUs; memory decides what fits. AWS EC2 on-demand, us-east-1, Linux
# (aws.amazon.com/ec2/pricing/on-demand, read 2026-11). t3 instances are burstable: fine for the
# light load of a small model; the c7i ones sustain full CPU.
CPU_INSTANCES: dict[str, dict[str, Any]] = {
    "t3.micro": {"vcpus": 2, "memory_gib": 1.0, "usd_per_hour": 0.0104},
    "t3.small": {"vcpus": 2, "memory_gib": 2.0, "usd_per_hour": 0.0208},
    "c7i.large": {"vcpus": 2, "memory_gib": 4.0, "usd_per_hour": 0.08925},
    "c7i.xlarge": {"vcpus": 4, "memory_gib": 8.0, "usd_per_hour": 0.1785},
    "c7i.2xlarge": {"vcpus": 8, "memory_gib": 16.0, "usd_per_hour": 0.357},
}
