# dsmr-ts API / reader image. InfluxDB runs from the official influxdb:2 image (docker-compose.yml).
FROM python:3.11-slim
# tzdata: zoneinfo for Europe/Amsterdam; the slim image has none.
RUN apt-get update && apt-get install -y --no-install-recommends tzdata && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY setup.py README.md ./
COPY dsmr_ts ./dsmr_ts
COPY config ./config
RUN pip install --no-cache-dir .
ENV DSMR_TS_CONFIG=/config/dsmr-ts.yaml \
    DSMR_TS_INFLUXDB_MANAGED=false \
    DSMR_TS_SERVER_BIND=0.0.0.0:7777
EXPOSE 7777
CMD ["dsmr-ts", "serve"]
