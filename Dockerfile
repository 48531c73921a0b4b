# aifmon in one image: the CLI with every package; the compose file picks the command.
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/aifmon aifmon
WORKDIR /opt/aifmon
COPY pyproject.toml README.md ./
# src/aifmon/ links the part folders in as aifmon.exporters, aifmon.ingest, …: copy both
COPY src ./src
COPY telemetry ./telemetry
COPY exporters ./exporters
COPY ingest ./ingest
COPY stores ./stores
COPY rollups ./rollups
COPY alerts ./alerts
COPY dashboard ./dashboard
COPY deploy ./deploy
# The data and generated-configuration folders belong to aifmon, so the named volumes compose mounts on
# them start owned by aifmon (Docker copies the image folder's owner into a new volume).
RUN pip install --no-cache-dir '.[site]' \
    && mkdir -p /var/lib/aifmon/data /etc/aifmon/generated \
    && chown aifmon /var/lib/aifmon/data /etc/aifmon/generated
USER aifmon
WORKDIR /var/lib/aifmon
# Compile the exposition parser once into the image (~/.cache/numba), so a new container's first scrape loads
# the machine code instead of compiling it (about 1 s); a host with another CPU compiles again, as Numba checks.
RUN python -c "from aifmon.ingest.parser import warm_up; warm_up()"
ENTRYPOINT ["aifmon"]
