"""The README and docs/ say what the code does: the generated tables match, the links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.registry import STAGES, stage_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_stage_table_is_the_registry():
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- stage-table -->\n", 1)[1].split("\n<!-- /stage-table -->", 1)[0]
    assert table == stage_table()


def test_every_stage_has_its_subpackage_task_module_and_config_section():
    from flows.config import PipelineConfig

    for stage in STAGES:
        folder = ROOT / "tasks" / stage.name
        assert (folder / "__init__.py").is_file() and (folder / "task.py").is_file(), stage.name
        assert stage.code.startswith(f"tasks.{stage.name}."), stage.name
        assert set(stage.config_sections) <= set(PipelineConfig.model_fields)


def test_a_task_name_from_the_ui_leads_to_the_module_that_builds_it():
    import importlib

    for stage in STAGES:
        module = importlib.import_module(f"tasks.{stage.name}.task")
        names = {
            value.name
            for value in vars(module).values()
            if type(value).__name__ == "Task" and value.fn.__module__ == module.__name__
        }
        assert names <= set(stage.task_names) and names, (stage.name, names)


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", doc.read_text(), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_between_the_docs_resolve():
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#:]*\.md)?(?:#([^)]*))?\)", doc.read_text()):
            linked = doc.parent / target if target else doc
            assert linked.is_file(), f"{doc.name} links to missing {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{doc.name} links to {target}#{anchor}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
