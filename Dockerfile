# The gateway alone, on embedded defaults (call log in /data/shadowtune-data). Same install command as the
# README, plus the postgres extra (store.state_url: postgresql://...). Tag it with the version:
#   docker build -t shadowtune:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SHADOWTUNE_SERVER__HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY trainer ./trainer
COPY evals ./evals
# A fixed uid, so that Kubernetes can check runAsNonRoot and give the volumes to its group (fsGroup).
RUN pip install ".[postgres]" && useradd --uid 10001 --user-group --create-home shadowtune \
    && mkdir -p /data && chown shadowtune:shadowtune /data
USER 10001
# The default log directory (./shadowtune-data) is in the volume. No SHADOWTUNE_STORE__LOG_DIR here: the
# environment overrides the config file, so it would move the log of a mounted --config elsewhere.
WORKDIR /data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Pass --upstream URL (zero-config) or mount a config file and pass --config /etc/shadowtune/config.yaml
ENTRYPOINT ["shadowtune", "serve"]
CMD ["--upstream", "https://api.openai.com/v1"]
