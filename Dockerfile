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
# The data and generated-configuration folders belong to aifmon, so the named volumes compose mounts on
# them start owned by aifmon (Docker copies the image folder's owner into a new volume).
RUN pip install --no-cache-dir . \
    && mkdir -p /var/lib/aifmon/data /etc/aifmon/generated \
    && chown aifmon /var/lib/aifmon/data /etc/aifmon/generated
USER aifmon
WORKDIR /var/lib/aifmon
ENTRYPOINT ["aifmon"]
