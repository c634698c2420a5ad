# dsmr-ts API / reader image. InfluxDB runs from the official influxdb:2 image (docker-compose.yml).
# BASE: any Debian-like image with Python 3.11+ and its venv module (python:3.11-slim; the tests
# build it FROM a Debian made with debootstrap, as no image registry is reachable there).
ARG BASE=python:3.11-slim
FROM ${BASE}
# tzdata: zoneinfo for Europe/Amsterdam; the slim image has none.
RUN apt-get update && apt-get install -y --no-install-recommends tzdata && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY setup.py README.md constraints.txt ./
COPY dsmr_ts ./dsmr_ts
COPY config ./config
# The exact versions the test suite passed with (constraints.txt), in a venv of the image's own.
RUN python3 -m venv /opt/dsmr-ts \
    && /opt/dsmr-ts/bin/pip install --no-cache-dir -c constraints.txt . \
    && rm -rf /app/build
ENV PATH=/opt/dsmr-ts/bin:$PATH
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
