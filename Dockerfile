FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY resilience ./resilience
COPY tasks ./tasks
RUN pip install --no-cache-dir . && useradd --create-home app && mkdir -p /var/lib/resilience \
    && chown app /var/lib/resilience
USER app
ENV RESILIENCE_DATA_DIR=/var/lib/resilience
CMD ["celery", "-A", "tasks", "worker", "-l", "INFO"]
