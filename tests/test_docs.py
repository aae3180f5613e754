"""The course site: it builds offline and strict, its pages and labs point at each other, every
included piece of code exists, and every example it shows runs against the real server.

The checks are plain functions (``*_problems``) so that each can be shown to fail on a broken
input (``test_checks_catch_breakage``), not only to pass on the real site.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "course"
EXAMPLES = COURSE / "examples"
MKDOCS = Path(sys.executable).with_name("mkdocs")
BUILD_BUDGET_S = 60

# chapter page -> lab notebook: the names are fixed, the labs link back to the chapters.
CHAPTERS = {
    "01-api-design": "01_api_design",
    "02-openai-format": "02_openai_format",
    "03-fastapi-basics": "03_fastapi_basics",
    "04-streaming": "04_streaming",
    "05-errors": "05_errors",
    "06-embeddings": "06_embeddings",
    "07-tools": "07_tools",
    "08-batching": "08_batching",
    "09-responses": "09_responses",
    "10-providers": "10_providers",
    "11-scaling-out": "11_scaling_out",
}
NOTEBOOK_DIRS = ("labs", "solutions")

SNIPPET = re.compile(r'^\s*(?:[-*]\s+)?--8<--\s+"([^"]+)"\s*$', re.M)
SECTION_CALL = re.compile(r'Section\(\s*(?:chapter=)?"(\d\d-[\w-]+)"\s*,\s*(?:title=)?"((?:[^"\\]|\\.)*)"\s*\)')
NOTEBOOK_CHAPTER_LINK = re.compile(r"course/(\d\d-[\w-]+)\.md(?:#([\w-]+))?")


# ---- the checks ----------------------------------------------------------------------------

def snippet_problems(markdown: str, root: Path = ROOT) -> list[str]:
    """Every ``--8<-- "path[:section]"`` names an existing file and a section marked in it."""
    problems = []
    for target in SNIPPET.findall(markdown):
        path, _, rest = target.partition(":")
        file = root / path
        if not file.is_file():
            problems.append(f'"{target}": no file {path}')
            continue
        if rest and not rest.replace(":", "").isdigit():  # a named section, not a line range
            text = file.read_text(encoding="utf-8")
            for marker in (f"--8<-- [start:{rest}]", f"--8<-- [end:{rest}]"):
                if marker not in text:
                    problems.append(f'"{target}": {path} has no line "# {marker}"')
    return problems


def lab_link_problems(markdown: str, lab: str, root: Path = ROOT, pending: tuple[str, ...] = ()) -> list[str]:
    """A chapter links to its lab with a repository-relative link, and the lab exists (or is
    listed in mkdocs.yml as still being written)."""
    problems = []
    path = f"labs/{lab}.ipynb"
    if f"](../{path}" not in markdown:
        problems.append(f"no link to its lab: expected [..](../{path})")
    exists = (root / path).is_file()
    if not exists and path not in pending:
        problems.append(f"its lab {path} does not exist")
    return problems


def mkdocs_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def pending_pages() -> tuple[str, ...]:
    return tuple((mkdocs_config().get("extra") or {}).get("pending") or ())


def first_markdown_cell(notebook: Path) -> str:
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return ""


def chapter_link_problems(notebook: Path) -> list[str]:
    """A notebook's first markdown cell links to its chapter, ``course/NN-name.md``."""
    chapter = next((c for c, lab in CHAPTERS.items() if lab == notebook.stem), None)
    if chapter is None:
        return [f"{notebook.name} is not one of the course's labs: {sorted(CHAPTERS.values())}"]
    if f"course/{chapter}.md" not in first_markdown_cell(notebook):
        return [f"the first markdown cell of {notebook.parent.name}/{notebook.name} does not link to "
                f"course/{chapter}.md (write e.g. [Chapter](../course/{chapter}.md))"]
    return []


def nav_pages(nav: Any) -> set[str]:
    """The page files a mkdocs ``nav`` lists (at any depth)."""
    out: set[str] = set()
    if isinstance(nav, str):
        out.add(nav)
    elif isinstance(nav, list):
        for item in nav:
            out |= nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            out |= nav_pages(value)
    return out


def pages_missing_from_nav(course: Path, nav: Any, excluded: tuple[str, ...] = ("examples/",)) -> list[str]:
    listed = nav_pages(nav)
    pages = sorted(p.relative_to(course).as_posix() for p in course.rglob("*.md"))
    return [p for p in pages if p not in listed and not p.startswith(excluded)]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.nav_links: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.assets.append(a["src"] or "")
        if tag == "link" and a.get("href") and (a.get("rel") or "") in ("stylesheet", "preload", "icon",
                                                                         "modulepreload"):
            self.assets.append(a["href"] or "")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
            if "md-nav__link" in (a.get("class") or ""):
                self.nav_links.append(a["href"] or "")


def parse_html(text: str) -> _Collect:
    c = _Collect()
    c.feed(text)
    return c


def external_asset_problems(html: str) -> list[str]:
    """Scripts, styles, images and fonts that would be fetched from the network."""
    c = parse_html(html)
    found = [u for u in c.assets if re.match(r"^(?:[a-z]+:)?//", u) and not u.startswith("file:")]
    found += re.findall(r"@import\s+url\(\s*['\"]?(https?://[^)'\"]+)", html)
    found += re.findall(r"import\(\s*['\"](https?://[^'\"]+)", html)
    return found


def sections_named_in(text: str) -> list[tuple[str, str]]:
    return [(chapter, title.replace('\\"', '"')) for chapter, title in SECTION_CALL.findall(text)]


def slugify(title: str) -> str:
    """Python-Markdown's toc slug (what MkDocs uses for heading ids), for ASCII titles."""
    text = re.sub(r"`", "", title)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


# ---- the built site --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("site")
    start = time.monotonic()
    proc = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return {"proc": proc, "dir": out, "seconds": time.monotonic() - start}


def built(site: dict[str, Any]) -> Path:
    proc = site["proc"]
    if proc.returncode:
        log = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                        if not line.startswith("INFO"))
        pytest.fail(f"mkdocs build --strict failed:\n{log[-4000:]}")
    return site["dir"]


def test_site_builds_strict_and_fast(site):
    built(site)
    assert site["seconds"] < BUILD_BUDGET_S, f"the build took {site['seconds']:.0f} s (budget {BUILD_BUDGET_S} s)"


def test_site_needs_no_network(site):
    out = built(site)
    problems = {}
    for page in out.rglob("*.html"):
        found = external_asset_problems(page.read_text(encoding="utf-8"))
        if found:
            problems[page.relative_to(out).as_posix()] = found
    assert not problems, f"pages that load assets from the network (the site must work offline): {problems}"


def test_every_built_page_is_in_the_nav(site):
    out = built(site)
    nav = {link.split("#")[0] for link in parse_html((out / "index.html").read_text(encoding="utf-8")).nav_links}
    nav = {"index.html" if link in ("", ".", "./") else link for link in nav}
    pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")} - {"404.html"}
    assert not pages - nav, f"pages not reachable from the navigation: {sorted(pages - nav)}"


def test_lab_pages_link_to_their_chapters(site):
    """Links in rendered notebooks were rewritten from repository paths to pages of the site."""
    out = built(site)
    problems = []
    for folder in NOTEBOOK_DIRS:
        for notebook in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
            page = out / folder / f"{notebook.stem}.html"
            if not page.is_file():
                problems.append(f"{folder}/{notebook.name} was not rendered into the site")
                continue
            links = parse_html(page.read_text(encoding="utf-8")).links
            chapter = next(c for c, lab in CHAPTERS.items() if lab == notebook.stem)
            if not any(link.split("#")[0] == f"../{chapter}.html" for link in links):
                problems.append(f"{folder}/{notebook.stem}.html has no link to ../{chapter}.html")
            for link in links:
                target = link.split("#")[0]
                if re.match(r"^[a-z]+:", target) or not target:
                    continue
                if target.endswith(".md") or not (page.parent / target).exists():
                    problems.append(f"{folder}/{notebook.stem}.html links to {link}, which is not in the site")
    assert not problems, "\n".join(problems)


def test_sections_named_by_lab_checks_exist(site):
    """Feedback says "reread section X of chapter Y": X must be a heading of Y."""
    out = built(site)
    sources = [*sorted((ROOT / "coursekit").rglob("*.py")),
               *(nb for d in NOTEBOOK_DIRS for nb in sorted((ROOT / d).glob("*.ipynb")))]
    problems = []
    for source in sources:
        for chapter, title in sections_named_in(source.read_text(encoding="utf-8")):
            page = out / f"{chapter}.html"
            if not page.is_file():
                problems.append(f"{source.relative_to(ROOT)}: no chapter {chapter}")
            elif slugify(title) not in parse_html(page.read_text(encoding="utf-8")).ids:
                problems.append(f'{source.relative_to(ROOT)}: course/{chapter}.md has no heading "{title}"')
    for folder in NOTEBOOK_DIRS:
        for notebook in sorted((ROOT / folder).glob("*.ipynb")):
            for chapter, anchor in NOTEBOOK_CHAPTER_LINK.findall(notebook.read_text(encoding="utf-8")):
                page = out / f"{chapter}.html"
                if not page.is_file():
                    problems.append(f"{folder}/{notebook.name} links to course/{chapter}.md, which does not exist")
                elif anchor and anchor not in parse_html(page.read_text(encoding="utf-8")).ids:
                    problems.append(f"{folder}/{notebook.name} links to course/{chapter}.md#{anchor}: no such anchor")
    assert not problems, "\n".join(problems)


# ---- the sources -----------------------------------------------------------------------------

PAGES = sorted(p for p in COURSE.rglob("*.md") if "examples" not in p.parts)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(COURSE).as_posix() for p in PAGES])
def test_included_snippets_exist(page):
    problems = snippet_problems(page.read_text(encoding="utf-8"))
    assert not problems, f"{page.relative_to(ROOT)} includes what does not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_links_to_its_lab(chapter):
    page = COURSE / f"{chapter}.md"
    assert page.is_file(), f"missing chapter course/{chapter}.md"
    problems = lab_link_problems(page.read_text(encoding="utf-8"), CHAPTERS[chapter], pending=pending_pages())
    assert not problems, f"course/{chapter}.md: " + "; ".join(problems)



CHAPTER_PARTS = ("Key insight", "## Pitfalls that break real clients", "## Local verification checkpoint",
                 "## Exercise")


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_has_every_part(chapter):
    """Every chapter: the insight first, then the pitfalls, the checkpoint and the exercise, in order."""
    text = (COURSE / f"{chapter}.md").read_text(encoding="utf-8")
    positions = [text.find(part) for part in CHAPTER_PARTS]
    missing = [part for part, at in zip(CHAPTER_PARTS, positions) if at < 0]
    assert not missing, f"course/{chapter}.md lacks {missing}"
    assert positions == sorted(positions), f"course/{chapter}.md: the parts are not in the order {CHAPTER_PARTS}"
    assert text.find("Key insight") < text.find("\n## "), f"course/{chapter}.md: the key insight must come first"


NOTEBOOKS = sorted(nb for d in NOTEBOOK_DIRS for nb in (ROOT / d).glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[f"{nb.parent.name}/{nb.name}" for nb in NOTEBOOKS])
def test_lab_links_to_its_chapter(notebook):
    problems = chapter_link_problems(notebook)
    assert not problems, problems[0]


def test_every_page_is_in_the_nav():
    missing = pages_missing_from_nav(COURSE, mkdocs_config()["nav"])
    assert not missing, f"pages under course/ that mkdocs.yml's nav does not list: {missing}"


def test_every_request_field_is_documented():
    from reference_server import protocol, protocol_responses

    page = (COURSE / "reference" / "endpoints.md").read_text(encoding="utf-8")
    models = (protocol.CreateChatCompletionRequest, protocol.CreateCompletionRequest, protocol.CreateEmbeddingRequest,
              protocol_responses.CreateResponse)
    fields = {(f.alias or name) for m in models for name, f in m.model_fields.items()}
    missing = sorted(f for f in fields if f"`{f}`" not in page)
    assert not missing, f"request fields missing from course/reference/endpoints.md: {missing}"


def test_every_error_code_is_documented():
    page = (COURSE / "reference" / "errors.md").read_text(encoding="utf-8")
    codes = {c for p in (ROOT / "reference_server").rglob("*.py")
             for c in re.findall(r'code="([a-z_]+)"', p.read_text(encoding="utf-8"))}
    missing = sorted(c for c in codes if f"`{c}`" not in page)
    assert codes and not missing, f"error codes missing from course/reference/errors.md: {missing}"


def server_options() -> set[str]:
    """Every --option of ``reference-server --help``."""
    out = subprocess.run([sys.executable, "-m", "reference_server", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", out)) - {"--help"}


def test_every_server_option_is_documented():
    page = (COURSE / "reference" / "endpoints.md").read_text(encoding="utf-8")
    missing = sorted(o for o in server_options() if f"`{o}" not in page)
    assert not missing, f"options of reference-server missing from course/reference/endpoints.md: {missing}"


DEPLOY = EXAMPLES / "deploy"


def reference_server_flags(text: str) -> set[str]:
    """The --options given to reference-server in a shell script (continued lines joined)."""
    joined = text.replace("\\\n", " ")
    return {flag for line in joined.splitlines() if re.match(r"\s*(\S*/)?reference-server\b", line)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line)}


def deploy_problems(folder: Path, options: set[str]) -> list[str]:
    """The deployment sketches: the YAML parses, keys files load, and every reference-server option
    and REFERENCE_SERVER_* variable they use exists."""
    from reference_server.limits import read_keys_file
    from reference_server.settings import Settings

    problems, used = [], set()
    for path in sorted(folder.rglob("*")):
        where = path.relative_to(folder).as_posix()
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if path.suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                problems.append(f"{where}: not YAML: {exc}")
                continue
            for name, service in ((data or {}).get("services") or {}).items():
                if "dockerfile" in str(service.get("build", "")):  # our gateway image: command = its options
                    used |= {(where, f) for f in service.get("command", []) if str(f).startswith("--")}
        elif path.suffix == ".sh":
            used |= {(where, f) for f in reference_server_flags(text)}
        elif path.suffix == ".toml":
            try:
                read_keys_file(path)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        elif path.name.endswith("Dockerfile"):
            used |= {(where, f) for f in re.findall(r'"(--[a-z][a-z-]+)"', text)}
        for var in re.findall(r"REFERENCE_SERVER_([A-Z_]+)", text):
            if var.lower() not in Settings.model_fields:
                problems.append(f"{where}: REFERENCE_SERVER_{var} is not a setting")
    problems += [f"{where}: reference-server has no option {flag}" for where, flag in sorted(used)
                 if flag not in options]
    return problems


def test_deployment_sketches_are_valid():
    assert deploy_problems(DEPLOY, server_options()) == []


def test_deploy_check_catches_breakage(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  gateway:\n    build: {dockerfile: gw.Dockerfile}\n"
                                           "    command: [\"--upstreams\", \"x\"]\n")
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    (tmp_path / "run.sh").write_text("reference-server --port 8000 \\\n  --no-such-flag\nREFERENCE_SERVER_NOPE=1\n")
    (tmp_path / "keys.toml").write_text("[[keys]]\nname = 'x'\n")
    problems = "\n".join(deploy_problems(tmp_path, {"--port", "--upstream"}))
    for expected in ("bad.yaml: not YAML", "no option --upstreams", "no option --no-such-flag",
                     "REFERENCE_SERVER_NOPE is not a setting", "keys.toml"):
        assert expected in problems


# ---- the figures ------------------------------------------------------------------------------

FIGURES = COURSE / "figures"
FIGURE_LINK = re.compile(r"\]\((?:\.\./)*figures/([\w-]+)\.svg\)")


def figures_module() -> Any:
    """``course/figures/draw.py``, imported from its path (``course/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("course_figures_draw", FIGURES / "draw.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unshown_figures(course: Path) -> list[str]:
    """SVG files in ``course/figures`` that no page shows."""
    shown = {name for page in course.rglob("*.md") for name in FIGURE_LINK.findall(page.read_text(encoding="utf-8"))}
    return sorted(p.name for p in (course / "figures").glob("*.svg") if p.stem not in shown)


def test_figures_match_their_sources():
    """Every committed figure is exactly what its source draws from today's code and data."""
    problems = figures_module().stale()
    assert not problems, ("figures out of date (redraw: python course/figures/draw.py, then commit):\n"
                          + "\n".join(problems))


def test_every_figure_is_shown():
    assert not unshown_figures(COURSE), f"figures no page shows: {unshown_figures(COURSE)}"


def test_benchmark_plot_follows_the_included_report():
    """The plot is drawn from the very report the benchmarks page includes."""
    draw = figures_module()
    report = draw.benchmark_report().relative_to(ROOT).as_posix()
    assert f'--8<-- "{report}"' in (COURSE / "benchmarks.md").read_text(encoding="utf-8")
    heading, series = draw.concurrency_levels(draw.benchmark_report().read_text(encoding="utf-8"))
    assert "reference server" in " ".join(series), f"no reference-server rows in {report}: {sorted(series)}"
    assert all(len(rows) >= 2 for rows in series.values()), f"a contender with one level only: {series}"


# ---- the examples run ------------------------------------------------------------------------

SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if p.name != "capture.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs_against_the_server(script, server):
    """The pages show these files and what they printed; here they run against the real model."""
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "BASE_URL": server})
    assert p.returncode == 0, f"{script.name} failed:\n{p.stderr[-3000:]}"
    assert p.stdout.strip(), f"{script.name} printed nothing"
    shown = EXAMPLES / f"{script.stem}.out.txt"
    assert shown.is_file(), f"the page shows no output for {script.name}: run course/examples/capture.py --only outputs"


# ---- the checks can fail ---------------------------------------------------------------------

def test_checks_catch_breakage(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("# --8<-- [start:here]\nx = 1\n# --8<-- [end:here]\n")
    rel = code.relative_to(tmp_path).as_posix()
    assert not snippet_problems(f'--8<-- "{rel}:here"', tmp_path)
    assert snippet_problems(f'--8<-- "{rel}:gone"', tmp_path)
    assert snippet_problems('--8<-- "nowhere.py:here"', tmp_path)

    (tmp_path / "labs").mkdir()
    assert lab_link_problems("no link here", "01_api_design", tmp_path)
    assert lab_link_problems("[Lab](../labs/01_api_design.ipynb)", "01_api_design", tmp_path)  # file missing
    assert not lab_link_problems("[Lab](../labs/01_api_design.ipynb)", "01_api_design", tmp_path,
                                 pending=("labs/01_api_design.ipynb",))
    (tmp_path / "labs" / "01_api_design.ipynb").write_text(json.dumps(
        {"cells": [{"cell_type": "markdown", "source": ["# Lab 1\n", "no chapter link"]}]}))
    assert not lab_link_problems("[Lab](../labs/01_api_design.ipynb)", "01_api_design", tmp_path)
    assert chapter_link_problems(tmp_path / "labs" / "01_api_design.ipynb")

    course = tmp_path / "course"
    (course / "reference").mkdir(parents=True)
    (course / "index.md").write_text("# x")
    (course / "reference" / "lost.md").write_text("# x")
    assert pages_missing_from_nav(course, [{"Home": "index.md"}]) == ["reference/lost.md"]

    assert external_asset_problems('<script src="https://cdn.example/x.js"></script>')
    assert external_asset_problems('<link rel="stylesheet" href="//fonts.example/css">')
    assert not external_asset_problems('<script src="assets/x.js"></script><a href="https://x.org">x</a>')

    draw = figures_module()
    (tmp_path / "figs").mkdir()
    name = "worker-queue"
    assert draw.stale(tmp_path / "figs", [name]) == [f"{name}.svg is missing"]
    (tmp_path / "figs" / f"{name}.svg").write_bytes(draw.render(name).replace(b"</svg>", b"<!-- edited --></svg>"))
    assert draw.stale(tmp_path / "figs", [name]) == [f"{name}.svg differs from what course/figures/draw.py draws"]
    (tmp_path / "figs" / f"{name}.svg").write_bytes(draw.render(name))
    (tmp_path / "figs" / "orphan.svg").write_text("<svg/>")
    assert draw.stale(tmp_path / "figs", [name]) == ["orphan.svg is drawn by nothing in course/figures/draw.py"]
    assert draw.render(name) == draw.render(name), "the same source must give the same bytes"
    (course / "figures").mkdir()
    (course / "figures" / "a.svg").write_text("<svg/>")
    (course / "figures" / "b.svg").write_text("<svg/>")
    (course / "index.md").write_text("![x](figures/a.svg)")
    assert unshown_figures(course) == ["b.svg"]
    report = "| contender | clients | aggregate tok/s |\n|---|---:|---:|\n| ref | 1 | 10.0 (9.0–11.0) |\n| ref | 2 | 12.5 |\n"
    assert draw.concurrency_levels("#### Concurrent clients (64 tokens per request)\n\n" + report)[1] == {
        "ref": [(1, 10.0, 9.0, 11.0), (2, 12.5, 12.5, 12.5)]}

    assert sections_named_in('S = Section("04-streaming", "The wire format")') == [("04-streaming", "The wire format")]
    assert slugify("Overload: 429 and Retry-After") == "overload-429-and-retry-after"
    assert slugify("The legacy endpoint: `/v1/completions`") == "the-legacy-endpoint-v1completions"
