"""A stage's key follows the code it really runs: every helper it imports, and nothing else."""

from __future__ import annotations

import pytest

from tasks.registry import STAGES, stage_named, stage_table
from tasks.stage import code_closure, code_version, normalized_source, read_module_source

ROOTS = [
    (stage, group) for stage in STAGES for group in ((True, False) if stage.per_group else (False,))
]


def _edited(module: str, text: str):
    """A source reader that sees ``text`` appended to ``module``."""

    def read(name: str) -> str:
        source = read_module_source(name)
        return source + text if name == module else source

    return read


@pytest.mark.parametrize(("stage", "group"), ROOTS, ids=lambda v: getattr(v, "name", str(v)))
def test_an_edit_to_any_module_a_stage_imports_changes_its_key(stage, group):
    roots = stage.code_roots(group)
    base = code_version(roots, stage.libraries)
    closure = code_closure(roots)
    assert set(roots) <= closure
    for module in sorted(closure):
        changed = code_version(roots, stage.libraries, _edited(module, "\n_EDITED = 1\n"))
        assert changed != base, f"an edit to {module} left {stage.name}'s key unchanged"


@pytest.mark.parametrize(("stage", "group"), ROOTS, ids=lambda v: getattr(v, "name", str(v)))
def test_comments_and_docstrings_do_not_change_a_key(stage, group):
    roots = stage.code_roots(group)
    base = code_version(roots, stage.libraries)
    for module in code_closure(roots):
        reworded = _edited(module, '\n# a new comment\ndef _f():\n    """Doc."""\n')
        with_pass = _edited(module, "\ndef _f():\n    pass\n")
        assert code_version(roots, stage.libraries, reworded) == code_version(
            roots, stage.libraries, with_pass
        )
    assert normalized_source('"""Doc."""\nx = 1  # why\n') == normalized_source("x = 1\n")
    assert base == code_version(roots, stage.libraries)


def _moved_by(module: str) -> set[tuple[str, bool]]:
    """The (stage, per-group) outputs whose code version an edit to ``module`` changes."""
    edit = _edited(module, "\n_EDITED = 1\n")
    return {
        (stage.name, group)
        for stage, group in ROOTS
        if code_version(stage.code_roots(group), stage.libraries, edit)
        != code_version(stage.code_roots(group), stage.libraries)
    }


def test_a_converter_edit_rebuilds_exactly_the_outputs_that_run_it():
    # The notebook converter decides what documents the filter reads; the corpus stage only
    # lists files. The archive reader serves both: the listing of archives, and their reading.
    for converter in ("notebooks", "docstrings", "docpages", "testbodies", "kinds"):
        moved = _moved_by(f"tasks.corpus.{converter}")
        assert moved == {("filter", True), ("filter", False)}, converter
    assert _moved_by("tasks.corpus.package_index") == {
        ("corpus", False),
        ("filter", True),
        ("filter", False),
    }
    # A training-loop edit leaves every data stage as it is.
    assert {name for name, _ in _moved_by("tasks.train.loop")} == {"train", "evaluate", "publish"}


def test_the_publish_key_covers_the_model_card_markdown():
    assert "tasks.publish.markdown" in code_closure(stage_named("publish").code_roots())


def test_no_stage_key_hashes_prefect_side_code():
    for stage, group in ROOTS:
        closure = code_closure(stage.code_roots(group))
        assert not {m for m in closure if m.endswith(".task") or m == "tasks.running"}, stage


def test_library_versions_are_part_of_a_key():
    stage = stage_named("tokenizer")
    assert code_version(stage.code_roots(), ()) != code_version(stage.code_roots(), ("tokenizers",))


def test_the_stage_table_names_every_stage_in_pipeline_order():
    lines = stage_table().splitlines()[2:]
    assert [line.split(" | ")[0].strip("| ") for line in lines] == [s.name for s in STAGES]
    assert "`filter-group`, `filter`" in stage_table()
