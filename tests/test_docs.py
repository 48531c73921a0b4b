"""The docs say what the code computes: generated tables are what their generators render today, every relative
link leads to a file (and heading) that exists, every docs page is reachable from the README, the README stays short."""

import re
from pathlib import Path

from aifmon.telemetry.schema import metric_table_markdown
from bench.capacity_plan import load, markdown, plan, scale_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 350

FENCED_CODE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.+)$", re.M)


def _generated(page: Path, name: str) -> str:
    """The text between the page's `<!-- BEGIN generated NAME -->` line and its `<!-- END generated NAME -->`."""
    text = page.read_text(encoding="utf-8")
    begin, end = f"<!-- BEGIN generated {name} -->\n", f"<!-- END generated {name} -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"{page.name}: expected one generated {name} block"
    return text.split(begin)[1].split(end)[0]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(FENCED_CODE.sub("", page.read_text(encoding="utf-8")))}


def _links(page: Path) -> list[str]:
    """Relative link targets of the page's prose (code blocks and code spans are not links)."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_metrics_page_holds_the_table_the_schema_renders():
    assert _generated(DOCS / "metrics.md", "metric-table") == f"\n{metric_table_markdown()}\n"


def test_capacity_plan_and_scale_test_pages_hold_what_the_script_computes_from_the_measured_figures():
    """bench/capacity_plan.py's output on the committed bench/results/*.json, nothing typed in."""
    assert _generated(DOCS / "capacity-plan.md", "capacity-plan") == f"\n{markdown(plan())}\n"
    assert _generated(DOCS / "benchmarks.md", "scale-test") == f"\n{scale_markdown(load('scale_test'))}\n"


def test_every_relative_link_leads_to_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        for target in _links(page):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(README)}
    assert [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked] == []


def test_readme_stays_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) < README_MAX_LINES
