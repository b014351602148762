# The image every suprsend-celery service in docker-compose.yml runs: the package with
# its console scripts (suprsend-celery, celery) and the Prometheus exporter, Flower,
# and the Django example.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so editing the example does not reinstall them.
COPY pyproject.toml README.md CHANGELOG.md ./
COPY suprsend_celery ./suprsend_celery
RUN pip install ".[prometheus]" "flower>=2.0,<3" "django>=4.2,<6"

COPY examples ./examples

RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
USER app

EXPOSE 8787 5555 8000 9808
CMD ["suprsend-celery", "--help"]
