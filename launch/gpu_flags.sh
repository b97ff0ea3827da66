# XLA settings for one NVIDIA GPU, sourced by launch/gpu.sh and benchmarks/gpu_check.sh.
# Flags the caller already put in XLA_FLAGS come last, so they win.
GPU_XLA_FLAGS=(
  # Schedule independent work (copies, collectives) to overlap with compute, not in program order.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Run collectives on the highest-priority stream so compute kernels do not delay them.
  --xla_gpu_enable_highest_priority_async_stream=true
  # Prefetch the next scanned layer's weights and inputs while the current one runs.
  --xla_gpu_enable_while_loop_double_buffering=true
  # Use cuBLAS for the dense GEMMs rather than Triton-generated kernels.
  --xla_gpu_enable_triton_gemm=false
  # Let XLA call cuDNN's fused attention when jax asks for it (attention_impl 'auto' in bf16).
  --xla_gpu_enable_cudnn_fmha=true
)
export XLA_FLAGS="${GPU_XLA_FLAGS[*]} ${XLA_FLAGS:-}"
# Let the process use 90% of device memory (jax's default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
