from setuptools import find_packages, setup

setup(
    name="dsmr-ts",
    version="0.1.0",
    description="DSMR-reader compatible REST API over InfluxDB 2 time series",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dsmr_ts", "dsmr_ts.*"]),
    # The Go build module for influxd, and the example config a first start writes (a symlink to
    # config/dsmr-ts.example.yaml: the wheel gets a copy).
    package_data={
        "dsmr_ts": ["dsmr-ts.example.yaml", "web/*"],  # and the energy page's files
        "dsmr_ts.influx": ["build/go.mod", "build/go.sum"],
    },
    install_requires=[
        "falcon>=4.0,<5",
        "gunicorn[gevent]>=23,<28",  # the gevent worker; gunicorn 27 needs the extra for it (packaging)
        "gevent>=24,<27",
        "influxdb-client>=1.40,<2",
        "pyserial>=3.5,<4",
        "apscheduler>=3.10,<4",
        "pyyaml>=6,<7",
        "prometheus-client>=0.17,<1",
        "paho-mqtt>=2,<3",
        "cryptography>=41,<47",
        "crcmod-plus>=2.1,<3",  # CRC-16 in C (import name crcmod): the telegram check, per request
        "msgpack>=1.0,<2",  # InfluxQL answers as MessagePack: half influxd's encoding cost of JSON, and parsing
        "psycopg[binary]>=3.1,<4",  # dsmr-ts import dsmr-reader --database (PostgreSQL)
        "PyMySQL>=1.1,<2",  # ... (MySQL, MariaDB)
    ],
    # Tests, and the linter and type checker `make lint` (and so `make test`) runs.
    extras_require={
        "test": [
            "pytest>=8,<10",
            "requests>=2.31,<3",
            "jsonschema>=4.18,<5",
            "openapi-spec-validator>=0.7,<1",
            "schemathesis>=4,<5",
            "ruff>=0.15,<1",
            "mypy>=1.15,<3",
            "types-PyYAML>=6,<7",
            "playwright>=1.40,<2",  # drives Debian's chromium for the energy page's tests
        ]
    },
    entry_points={"console_scripts": ["dsmr-ts=dsmr_ts.cli:main"]},
)
