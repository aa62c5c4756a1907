# The gateway alone, on embedded defaults (call log in /data). Same install command as the README.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SHADOWTUNE_SERVER__HOST=0.0.0.0 SHADOWTUNE_STORE__LOG_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY trainer ./trainer
COPY evals ./evals
RUN pip install . && useradd --create-home shadowtune && mkdir -p /data && chown shadowtune /data
USER shadowtune
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Pass --upstream URL (zero-config) or mount a config file and pass --config /etc/shadowtune/config.yaml
ENTRYPOINT ["shadowtune", "serve"]
CMD ["--upstream", "https://api.openai.com/v1"]
