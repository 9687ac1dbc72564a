"""The shipped schema head, read from the migration scripts' text without Alembic."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_pipelines.lib.pg.schema_version import shipped_head


def _script(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(
        f'"""Migration {name}."""\n\n{body}\n\ndef upgrade():\n    pass\n'
    )


def test_the_head_is_the_revision_nothing_builds_on_whatever_the_file_order(
    tmp_path: Path,
) -> None:
    # File names sort in the opposite order of the chain: the head comes from the links.
    _script(tmp_path, "c_first", 'revision = "aaa"\ndown_revision = None')
    _script(tmp_path, "b_second", 'revision: str = "bbb"\ndown_revision: str | None = "aaa"')
    _script(tmp_path, "a_third", "revision = 'ccc'\ndown_revision = 'bbb'")
    assert shipped_head(tmp_path) == "ccc"


def test_a_merge_revision_closes_two_branches(tmp_path: Path) -> None:
    _script(tmp_path, "base", 'revision = "r0"\ndown_revision = None')
    _script(tmp_path, "left", 'revision = "r1"\ndown_revision = "r0"')
    _script(tmp_path, "right", 'revision = "r2"\ndown_revision = "r0"')
    _script(tmp_path, "merge", 'revision = "r3"\ndown_revision = ("r1", "r2")')
    assert shipped_head(tmp_path) == "r3"


def test_two_heads_are_refused_rather_than_one_picked(tmp_path: Path) -> None:
    _script(tmp_path, "base", 'revision = "r0"\ndown_revision = None')
    _script(tmp_path, "left", 'revision = "r1"\ndown_revision = "r0"')
    _script(tmp_path, "right", 'revision = "r2"\ndown_revision = "r0"')
    with pytest.raises(ValueError, match=r"expected one migration head, found \['r1', 'r2'\]"):
        shipped_head(tmp_path)


def test_the_real_scripts_have_one_head_that_is_one_of_them() -> None:
    versions = Path(__file__).resolve().parents[2] / "billing_pipelines/db/migrations/versions"
    head = shipped_head()
    assert any(f'revision = "{head}"' in p.read_text() for p in versions.glob("*.py"))
