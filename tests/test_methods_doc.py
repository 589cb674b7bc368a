"""docs/methods.md is the method reference the code cites: every "docs/methods.md §N" in src/ names a section
that exists there, and every registered guider and schedule is described in it (so a new method cannot ship
undocumented)."""

import re
from pathlib import Path

import pytest

from guidelab.guiders import describe_guiders, describe_schedules

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
TEXT = DOC.read_text()
SECTIONS = set(re.findall(r"^##+ §(\d+)\b", TEXT, re.M))


def _citations() -> list[tuple[str, str]]:
    """(file:line, section) for every § cited after "docs/methods.md" in src/ ("§0 and §4" cites both)."""
    out = []
    for file in sorted((ROOT / "src").rglob("*.py")):
        text = file.read_text()
        for m in re.finditer(r"docs/methods\.md((?:[ '’s]*(?:,|and)?\s*§\d+)+)", text):
            line = text.count("\n", 0, m.start()) + 1
            out.extend((f"{file.relative_to(ROOT)}:{line}", n) for n in re.findall(r"§(\d+)", m.group(1)))
    return out


def test_the_doc_has_its_sections():
    assert {str(n) for n in range(10)} <= SECTIONS


def test_src_cites_the_doc_and_not_the_design_guide():
    assert len(_citations()) > 20
    stale = [str(f.relative_to(ROOT)) for f in (ROOT / "src").rglob("*.py") if "METHODS.md" in f.read_text()]
    assert not stale, f"cite docs/methods.md, not METHODS.md: {stale}"


@pytest.mark.parametrize(("where", "section"), _citations())
def test_every_cited_section_exists(where, section):
    assert section in SECTIONS, f"{where} cites docs/methods.md §{section}, which has no heading"


@pytest.mark.parametrize("name", [g["name"] for g in describe_guiders()] + [s["name"] for s in describe_schedules()])
def test_every_registered_method_is_described(name):
    assert f"`{name}`" in TEXT, f"docs/methods.md does not describe {name!r}"


def test_every_guider_default_scale_is_in_the_defaults_section():
    from guidelab.guiders import GUIDERS

    defaults = TEXT.split("## §9", 1)[1]
    for name, cls in GUIDERS.items():
        if hasattr(cls, "default_scale"):
            assert f"`{name}`" in defaults, f"§9 does not give {name!r}'s default scale"


def test_every_guider_with_a_default_scale_guides_by_default_and_reports_it():
    from guidelab.guiders import GUIDERS, build_guider
    from guidelab.guiders.base import ScheduledGuider
    from guidelab.recipe import SampleConfig, run_sample

    for name, cls in sorted(GUIDERS.items()):
        if not issubclass(cls, ScheduledGuider) or name == "learned":
            continue
        if cls.default_scale is None:
            with pytest.raises(ValueError, match="^scale: "):
                build_guider(name)
            continue
        assert cls.default_scale != 1.0, f"{name} would be unguided by default"
        assert build_guider(name).schedule.scale == cls.default_scale
        assert build_guider(name, schedule={"name": "constant"}).schedule.scale == cls.default_scale
        assert build_guider(name, scale=1.0).schedule.scale == 1.0  # an explicit scale wins
    config = SampleConfig(target="multimodal-2d", guider="apg", steps=8, n=32)
    assert run_sample(config).resolved["gamma"] == 3.0  # the sidecar's config.gamma
