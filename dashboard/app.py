"""The Dash app: every page, served from this machine (no CDN), refreshed by one interval per page."""

from __future__ import annotations

import logging

import dash
from dash import Input, Output, dcc, html

from alerts.evaluator import state_path_for
from dashboard.pages import alerts, factories
from telemetry.config import is_loopback, parse_listen
from telemetry.inventory import Inventory
from telemetry.store import Store

log = logging.getLogger(__name__)


def create_app(store: Store, inventory: Inventory, refresh_s: float = 5.0) -> dash.Dash:
    """A Dash app reading `store`; `refresh_s` is the live pages' refresh period in seconds."""
    app = dash.Dash(
        __name__,
        title="aifmon",
        serve_locally=True,  # air-gapped sites: every script and style comes from this server
        suppress_callback_exceptions=True,
        update_title=None,
    )
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            html.Header(
                [
                    html.Span("aifmon", className="brand"),
                    html.Span(inventory.name, className="site"),
                    html.Nav([dcc.Link("Factories", href="/", id="nav-factories"), dcc.Link("Alerts", href="/alerts", id="nav-alerts")],
                             className="nav"),
                    html.Span("illustrative demo data" if inventory.illustrative else "", className="badge"),
                ],
                className="topbar",
            ),
            html.Main(factories.layout(inventory, refresh_s), id="page"),
        ]
    )
    factories.register(app, store, inventory)
    alerts.register(app, state_path_for(store))
    # Every page's components, so Dash can check the callbacks of pages not shown yet.
    app.validation_layout = html.Div([app.layout, alerts.layout(refresh_s)])

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def route(pathname: str | None):
        return alerts.layout(refresh_s) if pathname == "/alerts" else factories.layout(inventory, refresh_s)

    return app


def make_server(app: dash.Dash, listen: str):
    """A waitress (production WSGI) server for the app; call `.run()` to serve and `.close()` to stop."""
    from waitress import create_server

    host, port = parse_listen(listen)
    if not is_loopback(host):
        raise ValueError(
            f"refusing to serve the dashboard on {host}: it has no authentication yet, so it listens on loopback only "
            "(put it behind an authenticating reverse proxy and keep --listen on 127.0.0.1)"
        )
    return create_server(app.server, host=host, port=port, threads=8, ident="aifmon")
