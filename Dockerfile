# aifmon in one image: the CLI with every package; the compose file picks the command.
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/aifmon aifmon
WORKDIR /opt/aifmon
COPY pyproject.toml setup.py README.md ./
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
# The parser's C scan (ingest/_scan.c) is built by the install: a compiler for it, removed after it. The data and
# generated-configuration folders belong to aifmon, so the named volumes compose mounts on them start owned by aifmon
# (Docker copies the image folder's owner into a new volume).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir '.[site]' \
    && python -c "import aifmon.ingest.parser" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/aifmon/data /etc/aifmon/generated \
    && chown aifmon /var/lib/aifmon/data /etc/aifmon/generated
USER aifmon
WORKDIR /var/lib/aifmon
ENTRYPOINT ["aifmon"]
