"""Rules of the layout that keep the two halves apart: the Dagster side never imports torch, and no
private Dagster API is used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loading_the_dagster_definitions_imports_no_torch() -> None:
    # A fresh interpreter: this test process has torch loaded already.
    code = "import sys, pipelines.definitions; print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_no_private_dagster_imports() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("pipelines", "lightning_modules", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if ("from dagster._" in line or "import dagster._" in line) and path.name != "test_architecture.py"
    ]
    assert offenders == []


# Assets whose compute imports torch and runs through the launcher (training jobs and steps, both
# reporting through Pipes), so the cluster deployment runs them where the GPUs are.
THROUGH_THE_LAUNCHER = {
    "pretrained_backbone",
    "transfer_finetuned",
    "scratch_baseline",
    "transfer_report",
    "classification_evaluation",
    "yolo_detector",
    "detection_evaluation",
    "detection_scratch_baseline",
    "detection_transfer_report",
    "prepared_imagenet",
    "prepared_transfer",
    "prepared_detection",
    "hparam_search",
    "vanishing_gradient_study",
    "degradation_study",
    "dropout_study",
    "batch_size_study",
    "epochs_study",
    "activation_loss_study",
}
# Computed in the Dagster step itself, and torch-free: observing data.dvc, and joining the studies'
# verdicts into one Markdown page.
IN_THE_STEP = {"raw_data", "studies_report"}


def test_compute_assets_launch_through_the_launcher(monkeypatch) -> None:
    monkeypatch.setenv("VISIONFLOW_DEPLOYMENT", "cluster")
    code = (
        "import json, pipelines.definitions as d\n"
        "out = {}\n"
        "for a in d.defs.resolve_all_asset_specs():\n"
        "    node = d.defs.resolve_assets_def(a.key)\n"
        "    out[a.key.to_user_string()] = 'launcher' in node.required_resource_keys\n"
        "print(json.dumps(out))"
    )
    import json

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    uses = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k for k, v in uses.items() if v} == THROUGH_THE_LAUNCHER
    assert {k for k, v in uses.items() if not v} == IN_THE_STEP


PACKAGES = ("lightning_modules", "pipelines")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_no_module_is_over_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, at any level (a function-level import is still a
    dependency), except under `if TYPE_CHECKING:`; `from pkg import sub` counts as importing pkg.sub."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str | None] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {owner(f"{node.module}.{a.name}") for a in node.names}
    return {m for m in found if m is not None}


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles = []
    for start in graph:  # a cycle through `start`: a path from one of its imports back to it
        seen, stack = set(), [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert cycles == []


def test_every_function_level_import_says_why() -> None:
    """An import inside a function hides a dependency (and once hid two import cycles): it is only for
    keeping a light module light (the Dagster side, the CLIs' --help) or an optional dependency, and a
    comment on its line or the line above says which."""
    silent = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in line and not above.strip().startswith("#"):
                        silent.append(f"{name}:{node.lineno}: {line.strip()}")
    assert sorted(set(silent)) == []
