# syntax=docker/dockerfile:1.7
# The GPU training image: the pods of training Jobs (TRL SFT / DPO / reward model / RL, PEFT,
# DeepSpeed ZeRO) and the training service itself when it trains in its own pod. Build from the
# repository root:
#   docker build -f docker/training-gpu.Dockerfile -t ghcr.io/arena-flywheel/arena-training-gpu:0.1.0 .
# A devel base: DeepSpeed compiles its CUDA ops (fused Adam, ZeRO offload) with nvcc on first use.
# Keep CUDA_BASE's CUDA major version equal to the one torch 2.13.0 is built for.
ARG CUDA_BASE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04

FROM ${CUDA_BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
# One pip command: torch pinned, DeepSpeed and ninja (for its op builds) alongside the project.
RUN pip install ".[train]" "torch==2.13.0" "deepspeed==0.19.8" "ninja==1.13.0" \
 && python -c "import arena_training, trl, deepspeed, torch; print('trl', trl.__version__, 'deepspeed', deepspeed.__version__, 'torch', torch.__version__)"

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-dev \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 arena \
 && useradd --system --uid 10001 --gid arena --home-dir /home/arena --create-home \
      --shell /usr/sbin/nologin arena
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/arena
EXPOSE 50051 9100
# Job pods get their command (torchrun / accelerate launch) from the training service.
CMD ["python", "-m", "arena_training"]
