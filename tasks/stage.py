"""A stage's one declaration, and the code version its key hashes. No Prefect here.

A stage's name is its subpackage in ``tasks/``, its folder in the store, its config section
and its Prefect task. Its code version is derived, never listed by hand: the closure of project
modules that its build module imports, each hashed without docstrings and comments (so a
wording change rebuilds nothing), plus the versions of the libraries that shape its output.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from storage.stages import StageRef, StageSpec

# The packages whose source can decide what a stage computes; imports of anything else are
# libraries, which a stage names in ``libraries`` when their version shapes its output.
PROJECT_PACKAGES = ("tasks", "storage")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Per-group outputs of a stage that runs once per corpus group live one folder down.
GROUPS_FOLDER = "groups"


def module_path(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The source file of a project module (``a.b`` is ``a/b.py`` or ``a/b/__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def read_module_source(name: str) -> str:
    """The text of a project module's source file."""
    path = module_path(name)
    if path is None:
        raise ModuleNotFoundError(f"no source file for project module {name}")
    return path.read_text(encoding="utf-8")


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if not level:
        return module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


@functools.lru_cache(maxsize=1024)
def imported_modules(name: str, source: str) -> frozenset[str]:
    """The project modules that a module's source imports, anywhere in it (functions too)."""
    is_package = (module_path(name) or Path()).name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, name, is_package)
            found.add(base)
            # ``from pkg import mod`` imports a module; ``from mod import name`` a name
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(
        module
        for module in found
        if module.split(".")[0] in PROJECT_PACKAGES and module_path(module) is not None
    )


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def code_closure(roots: Iterable[str], read: Callable[[str], str] = read_module_source) -> set[str]:
    """Every project module that importing ``roots`` runs: their imports, transitively, and
    the packages above each (Python runs a package's ``__init__`` before its modules)."""
    seen: set[str] = set()
    todo = [parent for root in roots for parent in _with_parents(root)]
    while todo:
        module = todo.pop()
        if module in seen or module_path(module) is None:
            continue
        seen.add(module)
        for imported in imported_modules(module, read(module)):
            todo.extend(_with_parents(imported))
    return seen


def _is_string_statement(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


@functools.lru_cache(maxsize=1024)
def normalized_source(source: str) -> str:
    """The code of a module without comments, docstrings or other bare string statements
    (field docstrings too), and without layout: what it does, not how it is worded."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            kept = [stmt for stmt in body if not _is_string_statement(stmt)]
            node.body = kept or [ast.Pass()]
    return ast.unparse(tree)


def library_version(distribution: str) -> str:
    """``name==version`` of an installed distribution."""
    return f"{distribution}=={importlib.metadata.version(distribution)}"


def code_version(
    roots: Iterable[str],
    libraries: Iterable[str] = (),
    read: Callable[[str], str] = read_module_source,
) -> str:
    """A short hash of the code that ``roots`` run (their project-module closure, normalized)
    and the versions of ``libraries`` (distribution names)."""
    digest = hashlib.sha256()
    for module in sorted(code_closure(roots, read)):
        digest.update(f"{module}\n{normalized_source(read(module))}\n".encode())
    for distribution in sorted(libraries):
        digest.update(f"{library_version(distribution)}\n".encode())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once, in its subpackage's ``__init__``.

    ``name`` is its subpackage ``tasks/{name}/``, its store folder ``{store}/{name}/{key}``,
    its config section and its Prefect task. A stage that runs once per corpus group commits
    those outputs under ``{name}/groups/{key}`` (Prefect task ``{name}-group``), then joins
    them into ``{name}/{key}``.
    """

    name: str
    """Subpackage, store folder, config section and Prefect task."""
    inputs: tuple[str, ...]
    """The stages whose outputs it reads, by name."""
    code: str
    """The module that builds ``{name}/{key}``: the root of the code that key hashes."""
    group_code: str | None = None
    """The module that builds each group's ``{name}/groups/{key}``, for a per-group stage."""
    libraries: tuple[str, ...] = ()
    """Distributions whose version shapes its output (``tokenizers``, ``torch``)."""
    sections: tuple[str, ...] | None = None
    """The config sections it takes, when not just its name (train takes model and train)."""

    @property
    def config_sections(self) -> tuple[str, ...]:
        """The sections of the pipeline config this stage takes."""
        return self.sections or (self.name,)

    @property
    def per_group(self) -> bool:
        """Whether it commits one output per corpus group before its join."""
        return self.group_code is not None

    @property
    def group_folder(self) -> str:
        """The store folder of its per-group outputs."""
        return f"{self.name}/{GROUPS_FOLDER}"

    @property
    def folders(self) -> tuple[str, ...]:
        """Every store folder it writes."""
        return (self.group_folder, self.name) if self.per_group else (self.name,)

    @property
    def group_task_name(self) -> str:
        """The Prefect task that builds one group's output, as the UI shows it."""
        return f"{self.name}-group"

    @property
    def task_names(self) -> tuple[str, ...]:
        """Its Prefect tasks' names, as the UI shows them."""
        return (self.group_task_name, self.name) if self.per_group else (self.name,)

    def code_roots(self, group: bool = False) -> tuple[str, ...]:
        """The module whose import closure an output's key hashes."""
        if group:
            if self.group_code is None:
                raise ValueError(f"stage {self.name} has no per-group outputs")
            return (self.group_code,)
        return (self.code,)

    def version(self, group: bool = False) -> str:
        """The code version its keys (or its groups' keys) hash, computed once per process."""
        return _cached_version(self.code_roots(group), self.libraries)

    def spec(
        self,
        params: BaseModel | dict[str, Any],
        inputs: dict[str, StageRef],
        group: bool = False,
        subfolder: str | None = None,
    ) -> StageSpec:
        """Where this stage's output (or one group's, with ``group``) for these parameters
        and inputs lives: ``{name}/{key}``, ``{name}/groups/{key}`` or
        ``{name}/{subfolder}/{key}`` (publish keeps each model name's versions apart)."""
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise ValueError(f"stage {self.name} reads no input named {sorted(unknown)}")
        folder = self.group_folder if group else self.name
        if subfolder:
            folder = f"{self.name}/{subfolder}"
        return StageSpec.of(folder, params, inputs, self.version(group))


@functools.cache
def _cached_version(roots: tuple[str, ...], libraries: tuple[str, ...]) -> str:
    return code_version(roots, libraries)
