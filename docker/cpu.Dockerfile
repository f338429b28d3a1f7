# syntax=docker/dockerfile:1.7
# The CPU image: judge, rating, selection, flywheel, and inference and training on the CPU
# (transformers, small models). Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t ghcr.io/arena-flywheel/arena:0.1.0 .
ARG PYTHON_VERSION=3.11.14

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
# Torch in the same pip command as everything else, from the CPU wheel index: on its own, a
# dependency would pull the multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" \
      ".[rating,judge,selection,inference,train]" "torch==2.13.0" \
 && python -c "import arena_core, arena_judge, arena_rating, torch; assert not torch.cuda.is_available()"

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 arena \
 && useradd --system --uid 10001 --gid arena --home-dir /home/arena --create-home \
      --shell /usr/sbin/nologin arena
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false
USER 10001:10001
WORKDIR /home/arena
# gRPC (with health and reflection) and Prometheus /metrics.
EXPOSE 50051 9100
# The chart runs `python -m arena_<service>`; `arena serve <service>` is the same.
CMD ["arena", "--help"]
