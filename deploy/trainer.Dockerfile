# The retraining pipeline's image (deploy/k8s/retrain.yaml): Shadowtune with the train, evals and postgres
# extras on the CUDA build of torch. Build from the repository root:
#   docker build -f deploy/trainer.Dockerfile -t shadowtune-trainer:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY trainer ./trainer
COPY evals ./evals
# torch first, from the CUDA wheel index (match it to the nodes' driver), then the extras around it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && pip install ".[train,evals,postgres]" \
    && useradd --uid 10001 --user-group --create-home shadowtune && mkdir -p /work && chown shadowtune:shadowtune /work
USER 10001
WORKDIR /work
ENTRYPOINT ["shadowtune"]
CMD ["triggers", "run"]
