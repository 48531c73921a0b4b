"""aifmon: energy and power monitoring for GPU supercomputers (EuroHPC AI Factories and Gigafactories).

One installed namespace. The repository keeps each part in a top-level folder (`exporters/`, `ingest/`,
`stores/`, `rollups/`, `alerts/`, `dashboard/`, `deploy/`, `telemetry/`); the links in this folder make
them `aifmon.exporters`, `aifmon.ingest`, … so that nothing else is installed at the top level.
"""
