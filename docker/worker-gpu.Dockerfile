# syntax=docker/dockerfile:1
# A GPU worker: `shiftaudit worker --device gpu --gpu 0` (docker-compose.yml), one container
# per GPU. Needs the NVIDIA container toolkit on the host.
#   docker build -f docker/worker-gpu.Dockerfile -t shiftaudit-worker-gpu .
# The CUDA 12 + cuDNN 9 runtime is for onnxruntime-gpu; torch's CUDA wheel carries its own
# CUDA libraries. The host driver must support both (TORCH_INDEX_URL picks torch's CUDA).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python is 3.12 (the project needs 3.11 or later).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "${VIRTUAL_ENV}" \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/shiftaudit shiftaudit \
    && mkdir -p /data/artifacts /data/worker-cache \
    && chown -R shiftaudit:shiftaudit /data

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# The dependencies from pyproject.toml, with onnxruntime-gpu in place of onnxruntime (the CPU
# build): both provide the module `onnxruntime` and must not be installed together.
COPY pyproject.toml ./
RUN python -c "import os, subprocess, sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']; \
deps = project['dependencies'] + extras['engine'] + extras['server']; \
deps = [d for d in deps if not d.startswith(('onnxruntime', 'shiftaudit['))]; \
deps.append('onnxruntime-gpu==' + os.environ['ONNXRUNTIME_GPU_VERSION']); \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

# Everything .dockerignore lets through (no tests, no local state, no .env).
COPY . .
RUN pip install --no-deps .

USER shiftaudit
VOLUME ["/data"]
CMD ["shiftaudit", "worker", "--device", "gpu", "--gpu", "0"]
