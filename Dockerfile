# dsmr-ts API / reader image. InfluxDB runs from the official influxdb:2 image (docker-compose.yml).
FROM python:3.11-slim
# tzdata: zoneinfo for Europe/Amsterdam; the slim image has none.
RUN apt-get update && apt-get install -y --no-install-recommends tzdata && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY setup.py README.md ./
COPY dsmr_ts ./dsmr_ts
COPY config ./config
RUN pip install --no-cache-dir .
# An unprivileged user (group 0, as Grafana's image runs, so Grafana may read the read-only token
# setup writes with mode 0640). Named volumes start out owned by it; a bind-mounted config folder
# must be too: chown 10001:0 docker/config.
RUN useradd --uid 10001 --gid 0 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dsmr-ts \
    && mkdir -p /config /spool && chown 10001:0 /config /spool
USER 10001:0
ENV DSMR_TS_CONFIG=/config/dsmr-ts.yaml \
    DSMR_TS_INFLUXDB_MANAGED=false \
    DSMR_TS_SERVER_BIND=0.0.0.0:7777
EXPOSE 7777
CMD ["dsmr-ts", "serve"]
