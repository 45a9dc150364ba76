# One image for every process of a deployment: webserver, daemon, admin API, Celery worker and the
# one-shot migration (deploy/compose.yaml picks the command). Runs, event logs and schedules are in
# PostgreSQL (deploy/dagster.yaml, baked in as $DAGSTER_HOME/dagster.yaml); nothing is kept on disk.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    HEATMAP_PIPELINE_HOME=/opt/dagster/data

WORKDIR /opt/heatmap_pipeline
COPY pyproject.toml README.md ./
COPY heatmap_pipeline ./heatmap_pipeline
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /opt/dagster dagster \
    && mkdir -p "$DAGSTER_HOME" "$HEATMAP_PIPELINE_HOME" \
    && chown -R dagster "$DAGSTER_HOME" "$HEATMAP_PIPELINE_HOME"
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml
COPY deploy/celery.yaml /opt/heatmap_pipeline/deploy/celery.yaml

USER dagster
# 3000: the authenticated Dagster UI; 8000: the admin API (/admin/run-jobs, /metrics, /healthz, /readyz).
EXPOSE 3000 8000
ENTRYPOINT ["heatmap-pipeline"]
CMD ["webserver", "--host", "0.0.0.0", "--port", "3000"]
