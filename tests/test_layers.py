"""The tree's layers, enforced: which package may import which.

The record and the analysis never import torch; restoration never imports the feedback app; the web reaches
compute only through the loop. Imports inside functions count too (they are read from the source, not run).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPUTE = ("torch", "torchvision", "diffusers", "pyiqa", "spandrel", "restoration")
FEEDBACK_LAYERS = ("record", "loop", "web", "studies", "analysis", "ops")

#: (folder, names it must never import, why)
RULES = [
    ("restoration", ("feedback", "app", "ttpo_cli"), "restoration knows nothing of the record or the web"),
    ("feedback/record", COMPUTE + ("gradio", "fastapi") + tuple(f"feedback.{x}" for x in FEEDBACK_LAYERS
                                                              if x != "record"),
     "the record stands alone: no compute, no web, no other layer"),
    ("feedback/analysis", COMPUTE + ("gradio", "fastapi", "feedback.loop", "feedback.web", "feedback.ops"),
     "analysis reads the record; it computes nothing with torch"),
    ("feedback/web", COMPUTE, "the web reaches compute only through the loop"),
    ("feedback/loop", ("gradio", "fastapi", "feedback.web", "feedback.studies", "feedback.ops"),
     "the loop serves the web and studies, never the other way round"),
    ("feedback/studies", ("gradio", "fastapi", "feedback.web", "feedback.ops"), "studies sit below the web"),
    ("restoration", ("experiments",), "experiments import the product, never the other way round"),
    ("feedback", ("experiments",), "experiments import the product, never the other way round"),
]


def imported_names(path: Path) -> set[str]:
    """Every absolute module name a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _breaks(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("folder,banned,why", RULES, ids=[r[0] for r in RULES])
def test_import_directions(folder: str, banned: tuple[str, ...], why: str) -> None:
    files = [p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts]
    assert files, folder
    bad = sorted(f"{p.relative_to(ROOT)} imports {n}" for p in files for n in imported_names(p) if _breaks(n, banned))
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_the_rules_catch_a_planted_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from restoration.sheet import round_sheet\n    import torch.nn\n")
    assert {"restoration.sheet", "torch.nn"} <= imported_names(planted)
    assert _breaks("torch.nn", COMPUTE) and not _breaks("torchlike", COMPUTE)


def test_record_and_analysis_load_without_torch() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import feedback.record, feedback.analysis\n"
        "for pkg in (feedback.record, feedback.analysis):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if '.migrations' not in m.name:\n"
        "            importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'diffusers', 'gradio')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_feedback_module_lives_in_a_layer() -> None:
    loose = sorted(p.name for p in (ROOT / "feedback").glob("*.py") if p.name not in ("__init__.py", "simulate.py"))
    assert not loose, f"modules outside the layer packages: {loose}"
    assert sorted(p.name for p in (ROOT / "feedback").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        FEEDBACK_LAYERS)
