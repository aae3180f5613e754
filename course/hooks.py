"""MkDocs hook: the labs and their solutions become pages of the site, and links keep working.

The notebooks live outside ``docs_dir`` (``labs/`` is generated from ``solutions/`` by
``python -m coursekit labs``), where mkdocs-jupyter cannot see them. This hook

* adds ``labs/*.ipynb`` and ``solutions/*.ipynb`` to the build as if they were in ``course/``,
  so mkdocs-jupyter renders them (``labs/01_api_design.html``, ``solutions/01_api_design.html``);
* fills the "Labs" section of the nav from whatever notebooks exist;
* rewrites repository-relative links: a chapter's ``../labs/NN_name.ipynb`` (right on GitHub
  and in an editor) points at the rendered lab, and a notebook's ``../course/NN-name.md``
  points at the chapter page;
* drops the CDN scripts nbconvert puts in notebook pages (MathJax, Mermaid): the site is
  built to be read offline;
* stands in for pages that are still being written (``extra.pending`` in mkdocs.yml) with a
  short placeholder, so the links to them hold. A placeholder is made only while the file is
  missing: once it exists, the real page is used, and the list entry is merely stale.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

NOTEBOOK_DIRS = ("labs", "solutions")
log = get_plugin_logger(__name__)
LABS_SECTION = "Labs"

_MD_LINK = re.compile(r"\]\(((?:\.\./)+)(labs|solutions)/([\w.-]+\.ipynb)(#[^)\s]*)?\)")
_HTML_HREF = re.compile(r'href="((?:\.\./|\./)*)(course|labs|solutions)/([\w.-]+)\.(md|ipynb)(#[^"]*)?"')
_CDN_SCRIPT = re.compile(r'<script[^>]*\ssrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>', re.S)
_MODULE_IMPORTING_CDN = re.compile(r'<script type="module">(?:(?!</script>).)*?import\("https?://.*?</script>', re.S)


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def notebooks(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).glob("[0-9][0-9]_*.ipynb"))


def notebook_title(path: Path) -> str:
    """The first ``# heading`` of the first markdown cell, else a title made from the file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", []))
            for line in source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            break
    number, _, name = path.stem.partition("_")
    return f"Lab {int(number)}: {name.replace('_', ' ')}"


def on_config(config: Any) -> Any:
    """Lists every existing lab (and its solution) under the nav's "Labs" section."""
    root = _root(config)
    for entry in config.nav or []:
        if isinstance(entry, dict) and LABS_SECTION in entry:
            section = entry[LABS_SECTION]
            section += _notebook_nav(root, "labs", config)
            solutions = _notebook_nav(root, "solutions", config)
            if solutions:
                section.append({"Solutions": solutions})
    return config


def pending(config: Any) -> list[str]:
    """Repository paths of pages still being written (``extra.pending``)."""
    return list((config.extra or {}).get("pending") or [])


def _placeholder_uri(path: str, docs: str) -> str:
    """Where the placeholder of a pending repository path lives in the docs."""
    if path.endswith(".ipynb"):
        return path.removesuffix(".ipynb") + ".md"
    return path.removeprefix(docs + "/")


def _notebook_nav(root: Path, folder: str, config: Any) -> list[dict[str, str]]:
    def title(nb: Path) -> str:  # solutions carry their lab's title; say which copy this is
        text = notebook_title(nb)
        return re.sub(r"^Lab\b", "Solution", text) if folder == "solutions" else text

    items = {nb.name: {title(nb): f"{folder}/{nb.name}"} for nb in notebooks(root, folder)}
    for path in pending(config):
        name = path.removeprefix(folder + "/")
        if path.startswith(folder + "/") and name not in items:
            stem = Path(name).stem
            items[name] = {f"Lab {int(stem[:2])}: {stem[3:].replace('_', ' ')} (being written)":
                           _placeholder_uri(path, Path(config.docs_dir).name)}
    return [items[k] for k in sorted(items)]


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for folder in NOTEBOOK_DIRS:
        for path in notebooks(root, folder):
            files.append(File(f"{folder}/{path.name}", str(root), config.site_dir, config.use_directory_urls))
    docs = Path(config.docs_dir).name
    for path in pending(config):
        if (root / path).exists():
            log.info(f"{path} exists now: it can come off 'extra: pending:' in mkdocs.yml")
            continue
        uri = _placeholder_uri(path, docs)
        if files.get_file_from_path(uri) is None:
            title = Path(path).stem.replace("_", " ").replace("-", " ")
            files.append(File.generated(config, uri, content=(
                f"# {title[:1].upper()}{title[1:]}\n\n!!! note \"Being written\"\n"
                f"    `{path}` is not in the repository yet. The chapters stand on their own meanwhile.\n")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """``../labs/x.ipynb`` (relative to the repository) -> ``labs/x.ipynb`` (relative to the docs)."""
    here = posixpath.dirname(page.file.src_uri)

    root, docs = _root(config), Path(config.docs_dir).name

    def fix(m: re.Match[str]) -> str:
        ups, folder, name, anchor = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        repo_path = posixpath.normpath(posixpath.join(docs, here, ups + f"{folder}/{name}"))
        if repo_path != f"{folder}/{name}":
            return m.group(0)
        target = repo_path
        if not (root / repo_path).exists() and repo_path in pending(config):
            target, anchor = _placeholder_uri(repo_path, docs), ""
        return f"]({posixpath.relpath(target, here or '.')}{anchor})"

    return _MD_LINK.sub(fix, markdown)


def _is_notebook(page: Any) -> bool:
    return page.file.src_uri.endswith(".ipynb")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Notebook pages: working links to the chapter and the other copy, and no CDN scripts."""
    if not _is_notebook(page):
        return html

    def fix(m: re.Match[str]) -> str:
        folder, stem, ext, anchor = m.group(2), m.group(3), m.group(4), m.group(5) or ""
        target = files.get_file_from_path(f"{stem}.md" if folder == "course" else f"{folder}/{stem}.{ext}")
        if target is None:
            return m.group(0)
        return f'href="{get_relative_url(target.url, page.url)}{anchor}"'

    html = _HTML_HREF.sub(fix, html)
    html = _CDN_SCRIPT.sub("", html)
    html = _MODULE_IMPORTING_CDN.sub("", html)
    return _banner(page, files) + html


def _banner(page: Any, files: Files) -> str:
    folder, name = page.file.src_uri.split("/", 1)
    other = files.get_file_from_path(f"{'solutions' if folder == 'labs' else 'labs'}/{name}")
    links = []
    if other is not None:
        label = "the solution" if folder == "labs" else "the lab (unsolved)"
        links.append(f'<a href="{get_relative_url(other.url, page.url)}">{label}</a>')
    kind = "lab" if folder == "labs" else "solution"
    how = (f"Run it yourself: <code>make labs</code>, then open <code>{folder}/{name}</code>."
           if folder == "labs" else "This is the source the lab is generated from.")
    see = f" See also {links[0]}." if links else ""
    return (f'<div class="admonition tip"><p class="admonition-title">This page shows the {kind} '
            f'as a notebook</p><p>{how}{see}</p></div>\n')
