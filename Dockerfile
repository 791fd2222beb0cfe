# guardrail server image; the docker-compose stack also runs the sample service, its load
# generator and the metrics proxy from it (examples/ and deploy/sample/ are copied in).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# the package first: its layer is rebuilt only when the code or its metadata change
COPY pyproject.toml README.md ./
COPY guardrail/ guardrail/
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin guardrail \
    && mkdir -p /var/lib/guardrail /etc/guardrail \
    && chown guardrail:guardrail /var/lib/guardrail

COPY examples/ examples/
COPY deploy/sample/ deploy/sample/

USER guardrail
EXPOSE 8080

# liveness only (the process answers); /readyz also needs the database
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

ENTRYPOINT ["guardrail"]
CMD ["serve", "--config", "/etc/guardrail/guardrail.yaml"]
