# syntax=docker/dockerfile:1

# Build stage: turn the source tree into a wheel, plus wheels for every runtime dependency,
# so the final stage installs offline from /wheels and never sees the source or a compiler.
FROM python:3.12.8-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README* LICENSE* ./
COPY exporter/ exporter/
RUN pip wheel --wheel-dir /wheels .

# Final stage: the slim base plus the installed wheels; no compilers, caches, sources or tests.
FROM python:3.12.8-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cloudflare-warp-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Cloudflare Zero Trust WARP device registrations" \
      org.opencontainers.image.source="https://github.com/cloudflare-warp-exporter/cloudflare-warp-exporter" \
      org.opencontainers.image.url="https://github.com/cloudflare-warp-exporter/cloudflare-warp-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The wheels are bind-mounted from the build stage for this one step, so none stay in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/cloudflare_warp_exporter-*.whl \
    && groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter \
    && mkdir -p /etc/cloudflare-warp-exporter

USER 10001:10001
EXPOSE 9787

# Only the standard library: any non-2xx answer or connection error makes urlopen raise.
# It probes port 9787: change it here too if you move --web.listen-address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9787/-/healthy', timeout=4)"]

ENTRYPOINT ["cloudflare-warp-exporter"]
CMD ["--config.file", "/etc/cloudflare-warp-exporter/config.yaml"]
