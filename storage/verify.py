"""Check every committed output of a store against its manifest, and uncommit what is damaged.

``codeparrot-ds verify`` runs this. Repairing an output only removes its manifest: the output
is then invisible, and the next run that needs it rebuilds it from its inputs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from storage.stages import (
    KEY_PATTERN,
    MANIFEST_NAME,
    DamagedManifestError,
    load_manifest,
    sha256_file,
)
from storage.store import DamagedObjectError, Store, StoreError

LATEST_NAME = "LATEST"
# Problems listed per output; the rest are counted in one line (the output is uncommitted whole).
MAX_LISTED = 20


@dataclass(frozen=True)
class Damage:
    """One problem found: the output folder (relative to the store), the object, what is wrong."""

    output: str
    name: str
    problem: str


@dataclass
class VerifyReport:
    """What a verification covered and what it found."""

    outputs: int = 0
    parts: int = 0
    bytes: int = 0
    damage: list[Damage] | None = None


def _part_digest(store: Store, rel: str) -> str:
    local = store.local_file(rel)
    if local is not None:
        return sha256_file(local)
    return hashlib.sha256(store.read_bytes(rel)).hexdigest()


def verify_output(
    store: Store, prefix: str, sizes: dict[str, int]
) -> tuple[list[Damage], int, int]:
    """The damage in one committed output (``stage/key``), its part count and bytes checked.

    ``sizes`` is the store's listing (path to size), so a missing part costs no request.
    """
    stage, _, key = prefix.rpartition("/")
    try:
        manifest = load_manifest(store, stage, key)
    except DamagedManifestError as err:
        return [Damage(prefix, MANIFEST_NAME, str(err).split(";")[0])], 0, 0
    damage, checked = [], 0
    for name, info in sorted(manifest.parts.items()):
        rel = f"{prefix}/{name}"
        size = sizes.get(rel)
        if size is None:
            damage.append(Damage(prefix, name, "missing"))
        elif size != info.size:
            damage.append(Damage(prefix, name, f"{size:,} bytes, manifest says {info.size:,}"))
        else:
            try:
                digest = _part_digest(store, rel)
            except (StoreError, OSError) as err:
                damage.append(Damage(prefix, name, f"unreadable ({err})"))
                continue
            checked += size
            if digest != info.sha256:
                damage.append(Damage(prefix, name, "sha256 differs from the manifest's"))
    if len(damage) > MAX_LISTED:
        more = Damage(prefix, "...", f"and {len(damage) - MAX_LISTED:,} more problems")
        damage = [*damage[:MAX_LISTED], more]
    return damage, len(manifest.parts), checked


def verify_latest(store: Store, rel: str, committed: set[str]) -> list[Damage]:
    """A ``LATEST`` pointer must be JSON naming a committed version beside it."""
    area = rel.rpartition("/")[0]
    try:
        latest = store.read_json(rel)
        version = latest.get("version") if isinstance(latest, dict) else None
    except (DamagedObjectError, FileNotFoundError) as err:
        return [Damage(area, LATEST_NAME, f"unreadable ({err})")]
    if not isinstance(version, str) or not re.match(KEY_PATTERN, version):
        return [Damage(area, LATEST_NAME, "names no valid version")]
    if f"{area}/{version}" not in committed:
        return [Damage(area, LATEST_NAME, f"points at {version}, which is not committed")]
    return []


def verify_store(store: Store, on_output: Callable[[str], None] | None = None) -> VerifyReport:
    """Check every committed output's parts (size and sha256) and every ``LATEST`` pointer."""
    sizes = store.list_sizes("")
    manifests = sorted(
        rel.removesuffix(f"/{MANIFEST_NAME}")
        for rel in sizes
        if rel.endswith(f"/{MANIFEST_NAME}") and rel.count("/") >= 2
    )
    report = VerifyReport(damage=[])
    for prefix in manifests:
        if on_output is not None:
            on_output(prefix)
        damage, parts, checked = verify_output(store, prefix, sizes)
        report.outputs += 1
        report.parts += parts
        report.bytes += checked
        report.damage += damage
    committed = set(manifests)
    for rel in sorted(r for r in sizes if r.rpartition("/")[2] == LATEST_NAME):
        report.damage += verify_latest(store, rel, committed)
    return report


def repair(store: Store, damage: list[Damage]) -> list[str]:
    """Uncommit each damaged output (remove its manifest) and each bad ``LATEST``, so the next
    run rebuilds or rewrites them; return what was removed."""
    removed = []
    for rel in sorted(
        {f"{d.output}/{MANIFEST_NAME if d.name != LATEST_NAME else LATEST_NAME}" for d in damage}
    ):
        store.remove(rel)
        removed.append(rel)
    return removed
