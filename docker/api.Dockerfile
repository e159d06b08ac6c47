# syntax=docker/dockerfile:1
# The API, the CPU worker, the reconciler and the migration job (docker-compose.yml).
# CPU-only torch: the API never runs a model, and CPU workers need no CUDA build.
#   docker build -f docker/api.Dockerfile -t shiftaudit .
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/shiftaudit shiftaudit \
    && mkdir -p /data/artifacts /data/worker-cache \
    && chown -R shiftaudit:shiftaudit /data

# The largest layer first, so that code changes do not download torch again.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
# The server's dependencies from pyproject.toml alone (core, engine and server extras, less
# the extras' references to the project itself): cached until they change.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']; \
deps = [d for d in project['dependencies'] + extras['engine'] + extras['server'] \
        if not d.startswith('shiftaudit[')]; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

# Everything .dockerignore lets through (no tests, no local state, no .env).
COPY . .
# An ordinary install: the migrations travel inside the package (`shiftaudit migrate`).
RUN pip install --no-deps .

USER shiftaudit
# Named volumes mounted here start with this ownership.
VOLUME ["/data"]
EXPOSE 8000
CMD ["shiftaudit", "serve", "--host", "0.0.0.0", "--port", "8000"]
