"""Vendoring: the import graph, the rewrite of import statements, and the files transformers fetches."""

import ast
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_relative_import_files

from hf_mltm.hub.vendor import (
    collect_vendored_modules,
    module_source,
    rewrite_imports,
    vendored_file_name,
    write_vendored_modules,
)

# A small package with the import forms hf_mltm uses: names re-exported by a package __init__ (one of them shadowing
# its submodule, as `hf_mltm.ot.sinkhorn` does), a renamed re-export, a side-effect import of a package, relative
# imports, a lazy import inside a function, a multi-line import and a licence header.
FAKE_PACKAGE = {
    "__init__.py": "from .models.fam.modeling_fam import FamModel\n",
    "ot/__init__.py": "from .costs import cost as ground_cost\nfrom .sinkhorn import sinkhorn\nSCALE = 3\n",
    "ot/_utils.py": "def helper():\n    return 1\n",
    "ot/sinkhorn.py": "from ._utils import helper\n\n\ndef sinkhorn():\n    return helper() + 1\n",
    "ot/costs.py": "def cost():\n    return 10\n",
    "ot/unused.py": "import fakepkg.does_not_exist\n",
    "models/__init__.py": "",
    "models/other/__init__.py": "REGISTRY = []\nfrom .configuration_other import OtherConfig\nREGISTRY.append(OtherConfig)\n",
    "models/other/configuration_other.py": "class OtherConfig:\n    pass\n",
    "models/fam/__init__.py": "from .modeling_fam import FamModel\n",
    "models/fam/configuration_fam.py": textwrap.dedent("""\
        import fakepkg.models.other  # noqa: F401  (registers OtherConfig)
        from fakepkg.ot import SCALE


        class FamConfig:
            scale = SCALE
        """),
    "models/fam/modeling_fam.py": textwrap.dedent('''\
        # Copyright 2026 the fakepkg authors. Licensed under the Apache License, Version 2.0.
        # Adapted from https://example.org/reference@abc123:model.py
        """A model.

        from fakepkg.ot import sinkhorn  <- prose in a docstring is not an import
        """

        from __future__ import annotations

        import math

        from fakepkg.ot import (
            ground_cost,
            sinkhorn,
        )

        from .configuration_fam import FamConfig


        class FamModel:
            config_class = FamConfig

            def forward(self):
                from fakepkg.ot.costs import cost as lazy_cost  # imported when called

                return math.floor(sinkhorn() * ground_cost() + lazy_cost() + FamConfig.scale)
        '''),
}


@pytest.fixture
def fake_package(tmp_path) -> Path:
    root = tmp_path / "src" / "fakepkg"
    for name, text in FAKE_PACKAGE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_vendored_file_names_keep_family_files_and_flatten_the_rest():
    assert vendored_file_name("hf_mltm.models.mltm.modeling_mltm") == "modeling_mltm.py"
    assert vendored_file_name("hf_mltm.models.panns.feature_extraction_panns") == "feature_extraction_panns.py"
    assert vendored_file_name("hf_mltm.ot.sinkhorn") == "ot_sinkhorn.py"
    assert vendored_file_name("hf_mltm.ot._utils") == "ot__utils.py"
    assert vendored_file_name("hf_mltm.models.panns") == "models_panns.py"  # a package: its __init__.py
    assert vendored_file_name("hf_mltm.models.towers") == "models_towers.py"
    assert vendored_file_name("hf_mltm.audio") == "audio.py"
    with pytest.raises(ValueError, match="the whole package cannot be vendored"):
        vendored_file_name("hf_mltm")
    with pytest.raises(ValueError, match="inside package 'hf_mltm'"):
        vendored_file_name("numpy.linalg")


def test_module_source_finds_modules_and_packages(fake_package):
    assert module_source("fakepkg.ot.sinkhorn", "fakepkg", fake_package) == (fake_package / "ot/sinkhorn.py", False)
    assert module_source("fakepkg.ot", "fakepkg", fake_package) == (fake_package / "ot/__init__.py", True)
    with pytest.raises(ValueError, match="'fakepkg.nothing' has no source file"):
        module_source("fakepkg.nothing", "fakepkg", fake_package)


def test_imports_are_rewritten_to_the_defining_modules_and_nothing_else_changes(fake_package):
    source = FAKE_PACKAGE["models/fam/modeling_fam.py"]
    text, needed = rewrite_imports(source, "fakepkg.models.fam.modeling_fam", package="fakepkg",
                                   package_dir=fake_package)
    # Names imported from the `ot` package come from the modules that define them (the renamed re-export keeps its
    # public name); the sibling import keeps its line; the lazy import keeps its indentation and comment.
    expected = source.replace(
        "from fakepkg.ot import (\n    ground_cost,\n    sinkhorn,\n)\n",
        "from .ot_costs import cost as ground_cost\nfrom .ot_sinkhorn import sinkhorn\n",
    ).replace(
        "        from fakepkg.ot.costs import cost as lazy_cost  # imported when called\n",
        "        from .ot_costs import cost as lazy_cost  # imported when called\n",
    )
    assert text == expected
    assert needed == ["fakepkg.ot.costs", "fakepkg.ot.sinkhorn", "fakepkg.models.fam.configuration_fam"]


def test_a_side_effect_import_of_a_package_keeps_importing_its_init(fake_package):
    text, needed = rewrite_imports(FAKE_PACKAGE["models/fam/configuration_fam.py"],
                                   "fakepkg.models.fam.configuration_fam", package="fakepkg",
                                   package_dir=fake_package)
    assert text.splitlines()[:2] == [
        "from .models_other import __name__ as _models_other_module  # noqa: F401  (registers OtherConfig)",
        "from .ot import SCALE",  # defined in ot/__init__.py itself: the __init__ is vendored
    ]
    assert needed == ["fakepkg.models.other", "fakepkg.ot"]


def test_vendored_closure_is_minimal_and_runs_without_the_package(fake_package, tmp_path, monkeypatch):
    modules = collect_vendored_modules(["fakepkg.models.fam.modeling_fam"], package="fakepkg",
                                       package_dir=fake_package, version="9.9")
    assert [m.file_name for m in modules.values()] == [
        "modeling_fam.py", "ot_costs.py", "ot_sinkhorn.py", "configuration_fam.py", "ot__utils.py",
        "models_other.py", "ot.py", "configuration_other.py",
    ]  # ot/unused.py and the families' other files are not reached
    folder = tmp_path / "vendored_fam"
    folder.mkdir()
    write_vendored_modules(modules, folder)
    first = (folder / "modeling_fam.py").read_text().splitlines()[:3]
    assert first[0] == ("# Vendored by hf_mltm.hub from fakepkg/models/fam/modeling_fam.py (hf_mltm 9.9): only its "
                        "hf_mltm imports were rewritten, to the files beside it.")
    assert first[1:] == FAKE_PACKAGE["models/fam/modeling_fam.py"].splitlines()[:2]  # licence and attribution kept
    # transformers fetches exactly these files from a repo: the entry and what its `from .x import` lines reach.
    reached = {Path(path).name for path in get_relative_import_files(folder / "modeling_fam.py")}
    assert reached | {"modeling_fam.py"} == {m.file_name for m in modules.values()}
    # The vendored files import nothing of fakepkg (which is not importable here) and compute the same result.
    for path in folder.glob("*.py"):
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert not any(name and name.startswith("fakepkg") for name in imported), path.name
    (folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("vendored_fam.modeling_fam")
    try:
        assert module.FamModel().forward() == (1 + 1) * 10 + 10 + 3
        assert [cls.__name__ for cls in sys.modules["vendored_fam.models_other"].REGISTRY] == ["OtherConfig"]
    finally:
        for name in [name for name in sys.modules if name.startswith("vendored_fam")]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import fakepkg.ot as o\n", r"m\.py:1: `import fakepkg\.ot as o` binds a module object"),
        ("import fakepkg.ot\nfakepkg.ot.sinkhorn()\n", r"m\.py:1: `import fakepkg\.ot` is used through attribute"),
        ("from fakepkg import ot\n", r"m\.py:1: `from fakepkg import ot` imports a module object"),
        ("from fakepkg.ot import *\n", r"m\.py:1: `from fakepkg\.ot import \*` cannot be traced"),
        ("import os\nfrom fakepkg.ot import sinkhorm\n", r"m\.py:2: package 'fakepkg\.ot' has no name 'sinkhorm'"),
        ("x = 1; from fakepkg.ot import sinkhorn\n", r"m\.py:1: an import statement shares its line"),
        ("from ...elsewhere import y\n", r"m\.py:1: the relative import \(level 3\) goes above package"),
        ("from fakepkg.missing import y\n", r"m\.py:1: `fakepkg\.missing` is not a module of package"),
    ],
)
def test_imports_that_flat_files_cannot_express_raise_naming_file_and_line(fake_package, source, message):
    with pytest.raises(ValueError, match=message):
        rewrite_imports(source, "fakepkg.models.m", package="fakepkg", package_dir=fake_package, file_name="m.py")


def test_two_modules_with_the_same_vendored_name_are_refused(fake_package):
    (fake_package / "ot_sinkhorn.py").write_text("X = 1\n")  # fakepkg/ot_sinkhorn.py vs fakepkg/ot/sinkhorn.py
    (fake_package / "entry.py").write_text("from fakepkg.ot_sinkhorn import X\nfrom fakepkg.ot import sinkhorn\n")
    with pytest.raises(ValueError, match=r"'fakepkg\.ot_sinkhorn' and 'fakepkg\.ot\.sinkhorn' would both be "
                                         r"vendored as ot_sinkhorn\.py"):
        collect_vendored_modules(["fakepkg.entry"], package="fakepkg", package_dir=fake_package)


def test_side_effect_imports_are_added_to_an_entry_module_only_when_missing(fake_package):
    extra = {"fakepkg.models.fam.configuration_fam": ["fakepkg.models.other", "fakepkg.models.fam"]}
    modules = collect_vendored_modules(["fakepkg.models.fam.configuration_fam"], package="fakepkg",
                                       package_dir=fake_package, extra_imports=extra)
    lines = modules["fakepkg.models.fam.configuration_fam"].text.splitlines()
    # models.other is imported already; models.fam is added after the last top-level import.
    assert lines[1:5] == [
        "from .models_other import __name__ as _models_other_module  # noqa: F401  (registers OtherConfig)",
        "from .ot import SCALE",
        "# Added by hf_mltm.hub: this checkpoint's sub-configs use the model types these modules register.",
        "from .models_fam import __name__ as _models_fam_module  # noqa: F401",
    ]
    assert "fakepkg.models.fam" in modules and "fakepkg.models.fam.modeling_fam" in modules


def test_the_mltm_family_vendors_its_import_graph_without_unused_modules():
    entries = [f"hf_mltm.models.mltm.{name}" for name in
               ("configuration_mltm", "modeling_mltm", "processing_mltm", "feature_extraction_mltm")]
    modules = collect_vendored_modules(entries)
    names = {m.file_name for m in modules.values()}
    assert {"modeling_mltm.py", "loss_mltm.py", "models_panns.py", "modeling_panns.py", "feature_extraction_panns.py",
            "ot_sinkhorn.py", "ot_costs.py", "audio.py", "validation.py", "models_towers.py", "models_winograd.py"} <= names
    # Not reached by m-LTM: the fragment solver, the streaming solver, the package __init__s of ot and models, and
    # everything outside the model code.
    assert not names & {"ot_fragments.py", "ot_streaming.py", "ot.py", "models.py", "feature_cache.py", "image.py",
                        "modeling_omit.py"}
    assert not any(name.startswith(("training", "evaluation", "adapters", "data_")) for name in names)
    for vendored in modules.values():
        tree = ast.parse(vendored.text)
        absolute = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                    and (n.module or "").startswith("hf_mltm")]
        absolute += [n for n in ast.walk(tree) if isinstance(n, ast.Import)
                     and any(alias.name.startswith("hf_mltm") for alias in n.names)]
        assert absolute == [], vendored.file_name
