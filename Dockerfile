# aifmon in one image: the CLI with every package; the compose file picks the command.
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/aifmon aifmon
WORKDIR /opt/aifmon
COPY pyproject.toml README.md aifmon.py ./
COPY telemetry ./telemetry
COPY exporters ./exporters
COPY rollups ./rollups
COPY alerts ./alerts
COPY dashboard ./dashboard
RUN pip install --no-cache-dir . && mkdir -p /var/lib/aifmon/data && chown aifmon /var/lib/aifmon/data
USER aifmon
WORKDIR /var/lib/aifmon
ENTRYPOINT ["aifmon"]
