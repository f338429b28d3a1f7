# syntax=docker/dockerfile:1.7
# The GPU inference image: the inference service with vLLM, for the model-server Deployments.
# Build from the repository root:
#   docker build -f docker/inference-gpu.Dockerfile -t ghcr.io/arena-flywheel/arena-inference-gpu:0.1.0 .
# The torch and vLLM wheels carry their CUDA libraries; the base image adds the settings the
# NVIDIA container toolkit reads. The host driver must support the CUDA version torch is built for.
ARG CUDA_BASE=nvidia/cuda:12.9.1-base-ubuntu24.04

FROM ${CUDA_BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev gcc g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
# One pip command, torch pinned, so vLLM and the project agree on a single torch.
RUN pip install ".[inference,gpu]" "torch==2.13.0" \
 && python -c "import arena_inference, vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
# gcc and the Python headers: Triton compiles its kernel launchers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-dev gcc libc6-dev \
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
CMD ["python", "-m", "arena_inference"]
