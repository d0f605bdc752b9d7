"""The package's shape stays readable: stages are thin and independent, the library is layered
without cycles, dvc.yaml's deps and paths follow the code, and the Bento packs only what the
service imports. Read from the source (nothing imported), so these run in a second."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shopflow.core import paths
from shopflow.serving.bento_build import packed_files
from tests.unit.import_graph import (
    PACKAGE,
    ROOT,
    STAGES,
    all_modules,
    closure,
    find_cycle,
    imports_of,
    module_file,
)

pytestmark = pytest.mark.unit

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_NAMES = sorted(DVC)
MAX_LINES = 400
# Modules allowed past MAX_LINES, with the reason.
LONG_MODULES = {
    "shopflow/core/config.py": "the params schema: one small class per params.yaml section",
}


def is_package_init(module: str) -> bool:
    return module_file(module).name == "__init__.py"


def test_every_dvc_stage_has_a_stage_module_and_every_stage_module_a_dvc_stage():
    modules = {p.stem for p in (ROOT / STAGES).glob("*.py") if p.stem != "__init__"}
    assert modules == set(STAGE_NAMES)
    for stage, spec in DVC.items():
        assert spec["cmd"] == f"python -m shopflow {stage}"


def test_the_import_contracts_hold():
    """pyproject.toml's import-linter contracts: no stage imports another, the library never
    imports a stage, the library's sub-packages are layered as docs/architecture.md says."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_modules_import_each_other_without_cycles():
    graph = {m: set(imports_of(m)) for m in all_modules()}
    assert find_cycle(graph) is None


def test_dvc_code_deps_cover_every_module_a_stage_imports():
    for stage, spec in DVC.items():
        deps = [d for d in spec["deps"] if d.startswith((f"{PACKAGE}/", f"{STAGES}/"))]
        for module in closure(f"{STAGES}.{stage}"):
            if module in (PACKAGE, STAGES) or (
                module.count(".") == 1 and module_file(module).name == "__init__.py"
            ):
                continue  # a package's empty __init__ (docstring only)
            file = module_file(module).relative_to(ROOT).as_posix()
            assert any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps), (
                f"dvc.yaml stage {stage}: {file} is imported but not a dependency"
            )


def test_package_inits_hold_only_a_docstring():
    for module in all_modules():
        if is_package_init(module) and module.count(".") <= 1:
            body = ast.parse(module_file(module).read_text(encoding="utf-8")).body
            assert all(isinstance(n, ast.Expr | ast.Assign) for n in body), module


def declared_paths() -> set[str]:
    values = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    values |= {str(paths.metrics(stage)) for stage in STAGE_NAMES}
    values |= {str(paths.live(stage) / "plots" / "metrics") for stage in STAGE_NAMES}
    return values


def test_dvc_data_paths_are_the_ones_the_code_declares():
    declared = declared_paths()
    for stage, spec in DVC.items():
        listed = [
            d
            for d in spec["deps"]
            if not d.startswith((f"{PACKAGE}/", f"{STAGES}/", "bento", "${"))
        ]
        for key in ("outs", "metrics", "plots"):
            listed += [next(iter(o)) if isinstance(o, dict) else o for o in spec.get(key, [])]
        for path in listed:
            assert path in declared, f"dvc.yaml stage {stage}: {path} is not in core/paths.py"


def test_modules_stay_small():
    folders = (ROOT / PACKAGE, ROOT / STAGES, ROOT / "tools")
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if name not in LONG_MODULES:
            assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concern"


def test_the_bento_packs_what_the_service_imports_and_no_pipeline_code():
    service = ROOT / "bento" / "service.py"
    tree = ast.parse(service.read_text(encoding="utf-8"))
    imported = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(PACKAGE)
    }
    needed = {PACKAGE}
    for module in imported:
        needed |= closure(module)
    files = {module_file(m).relative_to(ROOT).as_posix() for m in needed}
    bentofile = yaml.safe_load((ROOT / "bento" / "bentofile.yaml").read_text())
    packed = {p.relative_to(ROOT).as_posix() for p in packed_files(bentofile["include"])}
    assert files <= packed, sorted(files - packed)  # every module the service imports
    reached = {p.split("/")[1] for p in packed if p.startswith(f"{PACKAGE}/") and p.count("/") > 1}
    assert reached == {p.split("/")[1] for p in files if p.count("/") > 1}  # no other package
    assert bentofile["python"]["lock_packages"] is False  # locking reaches the network


def test_the_bento_environment_is_pinned_and_up_to_date():
    """bento/requirements.txt (`uv pip compile`, `make lock`) pins the service's packages and
    all they need, each at its constraints.txt version and at the version installed here
    (what the tests ran), torch as its CPU build. Checked offline: compiling needs an index."""
    import importlib.metadata

    from packaging.requirements import Requirement

    from shopflow.serving import bento_env

    text = bento_env.BENTO_REQUIREMENTS.read_text(encoding="utf-8")
    pins = bento_env.read_pins(bento_env.CONSTRAINTS)
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", "--"))]
    for line in lines:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        if requirement.name in pins:
            assert spec.version.split("+")[0] == pins[requirement.name], line
        installed = importlib.metadata.version(requirement.name)
        assert installed.split("+")[0] == spec.version.split("+")[0], f"{line}: {installed} here"
    direct = {r.name for r in bento_env.read_direct(bento_env.REQUIREMENTS_IN)}
    assert direct <= {Requirement(line).name for line in lines}
    assert "torch==2.13.0+cpu" in lines and f"--extra-index-url {bento_env.TORCH_CPU_INDEX}" in text
    assert not any(line.startswith(("apache-airflow", "dvc==", "evidently")) for line in lines)


def test_the_dag_files_parse_without_torch():
    """Airflow re-parses DAG files every 30 s: models load inside tasks, never at parse."""
    probe = "import sys, dags.shopflow_nightly, dags.shopflow_deploy; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
