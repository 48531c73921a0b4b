"""The Dash app: every page, served from this machine (no CDN), refreshed by one interval per page,
with sign-in and roles when users are configured (required beyond loopback)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import dash
from dash import Input, Output, State, dcc, html

from aifmon.alerts.state import state_path_for
from aifmon.dashboard.auth import Users, install, signed_in
from aifmon.dashboard.pages import PageContext, budgets, efficiency, factories, factory, parse_query, projects, reports
from aifmon.dashboard.pages import alerts as alerts_page
from aifmon.dashboard.signin import SignInPolicy
from aifmon.stores.store import SampleReader
from aifmon.telemetry.config import is_loopback, parse_listen
from aifmon.telemetry.inventory import Inventory

log = logging.getLogger(__name__)

PAGES: tuple[ModuleType, ...] = (factories, factory, budgets, projects, efficiency, alerts_page, reports)
"""In the order of the navigation bar; the first is the home page."""
DEFAULT_REPORTS_DIR = Path("data/reports")
_DASH_PATHS = ("/_dash-update-component",)


def create_app(store: SampleReader, inventory: Inventory, refresh_s: float = 5.0, users: Users | None = None,
               reports_dir: Path = DEFAULT_REPORTS_DIR, signin: SignInPolicy | None = None) -> dash.Dash:
    """A Dash app reading `store`; `refresh_s` is the live pages' refresh period in seconds.

    With `users`, every request needs a signed-in user whose role may open the page (see `aifmon.dashboard.auth`),
    under the throttling and session lifetimes of `signin` (defaults: `SignInPolicy()`);
    `reports_dir` holds the monthly reports, one folder per month (`aifmon report monthly --out DIR/YYYY-MM`).
    """
    app = dash.Dash(
        __name__,
        title="aifmon",
        serve_locally=True,  # air-gapped sites: every script and style comes from this server
        suppress_callback_exceptions=True,
        update_title="",  # no "Updating..." title while callbacks run (Dash's renderer treats "" as off)
    )
    ctx = PageContext(store, inventory, refresh_s, Path(reports_dir), state_path_for(store))
    app.server.config["AIFMON_USERS"] = users

    def role() -> str:
        """The signed-in role; everything is open (`operator`) when no users are configured (loopback only)."""
        if users is None:
            return "operator"
        who = signed_in()
        return who[1] if who else ""

    def shell() -> html.Div:
        r = role()
        links = [dcc.Link(p.TITLE, href=p.PATH, id=f"nav-{p.PREFIX.rstrip('-')}") for p in PAGES if r in p.ROLES]
        who = [html.Span(f"{_user()} ({r})", className="who"), html.A("sign out", href="/logout", id="nav-logout")] if users else []
        return html.Div([
            dcc.Location(id="url"),
            html.Header([
                html.Span("aifmon", className="brand"),
                html.Span(inventory.name, className="site"),
                html.Nav(links, className="nav"),
                html.Span("illustrative demo data" if inventory.illustrative else "", className="badge"),
                *who,
            ], className="topbar"),
            html.Main(id="page"),
        ])

    app.layout = shell  # a function: Dash calls it per page load, inside the request, so the nav fits the role
    for page in PAGES:
        page.register(app, ctx)
    # Every page's components, so Dash can check the callbacks of pages not shown yet.
    # Dash initialises validation_layout to a bare None, so mypy infers the attribute's type as None.
    app.validation_layout = html.Div(  # type: ignore[assignment]
        [dcc.Location(id="url"), html.Main(id="page"), *(p.layout(ctx, {}) for p in PAGES)])

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def route(pathname: str | None, search: str | None):
        # Only the path re-renders a page; a page's own controls rewrite the query string without a reload.
        page = next((p for p in PAGES if (pathname or "/") == p.PATH), None)
        if page is None:
            return html.Div([html.H1("No such page"), html.P(f"{pathname} is not a page of this dashboard."), dcc.Link("Overview", href="/")])
        if role() not in page.ROLES:
            return html.Div([html.H1(f"{page.TITLE}: not for the {role()} role"),
                             html.P("This page is for site operators. The board role opens the overview, projects, "
                                    "efficiency and reports.", id="forbidden")])
        return page.layout(ctx, parse_query(search))

    if users is not None:
        install(app.server, users, _allowed, signin)
    return app


def _user() -> str:
    who = signed_in()
    return who[0] if who else ""


def _page_of(component_id: object) -> ModuleType | None:
    if not isinstance(component_id, str):
        return None
    return next((p for p in PAGES if component_id.startswith(p.PREFIX)), None)


def _allowed(role: str, path: str, body: dict | None) -> bool:
    """Whether `role` may have this request: a page's address and its callbacks only for the roles that may open it,
    report files for the roles of the reports page; the app's scripts for every signed-in role (in-app navigation to
    a page the role may not open shows the router's refusal, and its callbacks are refused here)."""
    page = next((p for p in PAGES if path == p.PATH), None)
    if page is not None and role not in page.ROLES:
        return False
    if path in _DASH_PATHS:
        outputs = (body or {}).get("outputs", [])
        for out in outputs if isinstance(outputs, list) else [outputs]:
            page = _page_of(out.get("id") if isinstance(out, dict) else None)
            if page is not None and role not in page.ROLES:
                return False
        return True
    if path.startswith(reports.FILES_ROUTE):
        return role in reports.ROLES
    return True


def make_server(app: dash.Dash, listen: str, trusted_proxy: str | None = None):
    """A waitress (production WSGI) server for the app; call `.run()` to serve and `.close()` to stop.

    Beyond loopback only with users configured: the dashboard shows who draws power and what projects
    cost, so it is not served to a network without sign-in. From `trusted_proxy` (an IP address) only,
    X-Forwarded-For names the client (for sign-in throttling) and X-Forwarded-Proto https marks the request
    as HTTPS (Secure cookies); waitress drops those headers from any other peer.
    """
    from waitress import create_server

    host, port = parse_listen(listen)
    if not is_loopback(host):
        if app.server.config.get("AIFMON_USERS") is None:
            raise ValueError(
                f"refusing to serve the dashboard on {host} without sign-in: give it users "
                "(`aifmon dashboard --users FILE`, or AIFMON_DASHBOARD_USERS), or keep --listen on 127.0.0.1"
            )
        log.warning("dashboard on %s: passwords and session cookies cross the network in clear unless a TLS proxy "
                    "fronts it; terminate TLS in front of it", host)
    proxy = {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1, "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto",
             "clear_untrusted_proxy_headers": True} if trusted_proxy else {}
    return create_server(app.server, host=host, port=port, threads=8, ident="aifmon", **proxy)
