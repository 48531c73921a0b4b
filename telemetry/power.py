"""Power against caps, as the dashboard shows it and the alerts judge it: levels and facility power.

Shared by `aifmon.dashboard.panels` (the live bars) and `alerts` (the rules), so a factory that is red on the
page is the factory that pages, by the same figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aifmon.telemetry.inventory import Factory

WARNING, CRITICAL, BREACHED = 0.85, 0.95, 1.00
"""Share of a power cap at which power turns amber (>=), red (>=), and is over its cap (>)."""

METERED, ESTIMATED = "meter", "IT x design PUE"
"""How a factory's facility power was obtained (the `power_source` of the panels)."""


def sum_by_factory(latest: pd.DataFrame, keys: tuple[str, ...] = ("factory",)) -> pd.DataFrame:
    """Sum a `SampleReader.latest` frame per `keys`: columns `value` (sum) and `t_ms` (newest sample), indexed by `keys`."""
    if latest.empty:
        return pd.DataFrame(columns=["value", "t_ms"])
    return latest.groupby(list(keys)).agg(value=("value", "sum"), t_ms=("t_ms", "max"))


def facility_power(factory: Factory, meter_w: pd.Series, it_w: pd.Series) -> tuple[float, str]:
    """(facility power in W, source) of one factory.

    `meter_w` and `it_w` are summed facility-meter and node power per factory id, W. The meter counts
    where the factory has one and it reported; otherwise IT power times the design PUE (NaN when
    neither reported).
    """
    if factory.facility_meter and factory.id in meter_w.index:
        return float(meter_w[factory.id]), METERED
    return float(it_w.get(factory.id, np.nan)) * factory.design_pue, ESTIMATED
