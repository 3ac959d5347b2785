"""`export_pretrained`: a saved model folder that loads with ``trust_remote_code=True`` where hf_mltm is not installed.

``save_pretrained`` copies a family's own files into the folder, but they import ``hf_mltm.ot``,
``hf_mltm.models.towers``, ``hf_mltm.audio``, ... absolutely, so loading the folder needs hf_mltm installed. The
export adds, as flat files with relative imports (:mod:`hf_mltm.hub.vendor`), every hf_mltm module that the
folder's configuration, model, processor and feature extractor/image processor reach, and nothing else. It then

- points every ``auto_map`` entry (``config.json``, ``processor_config.json``, ``preprocessor_config.json``,
  ``tokenizer_config.json``) at the vendored files, adding the ``AutoModelFor...`` entries the model class is
  registered for in the package (``AutoModelForZeroShotImageClassification`` for OMIT, which the zero-shot
  image-classification pipeline loads through);
- makes the vendored configuration module register the hf_mltm tower families its sub-configs use (``panns``,
  ``efficientnet_lite``), so ``AutoConfig`` rebuilds them (``SubConfigSpec(AutoConfig, model_type=...)`` looks the
  model type up in the Auto registry);
- removes the local paths transformers records (``_name_or_path`` of the towers' configs, ``name_or_path``) and
  refuses to write any other local path;
- checks that transformers' own loader would fetch every vendored file (it follows ``from .x import`` lines only);
- writes the model card (``README.md``).

:func:`hf_mltm.hub.check.check_export` then proves the folder in a fresh process in which ``import hf_mltm`` fails.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .vendor import VendoredModule, collect_vendored_modules, vendored_file_name, write_vendored_modules

__all__ = [
    "PATH_KEYS",
    "export_pretrained",
    "find_local_paths",
    "python_requirements",
    "scrub_local_paths",
    "vendored_modules_for",
]

PACKAGE = "hf_mltm"
# Keys under which transformers records where an object was loaded from (configs, tokenizers).
PATH_KEYS = ("_name_or_path", "name_or_path")
# Import names whose pip distribution is spelled differently.
_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub", "sklearn": "scikit-learn"}


def _inside(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _processor_parts(processor: Any) -> list[Any]:
    """The processor and its sub-processors (feature extractor, image processor, tokenizer, ...)."""
    parts = [processor]
    get_attributes = getattr(type(processor), "get_attributes", None)
    for name in get_attributes() if callable(get_attributes) else []:
        part = getattr(processor, name, None)
        if part is not None:
            parts.append(part)
    return parts


def _sub_config_packages(config: Any) -> list[str]:
    """The hf_mltm packages whose model types the (nested) sub-configs of ``config`` use, e.g. ``hf_mltm.models.panns``."""
    packages: list[str] = []
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        module = type(sub).__module__
        if sub is None or not _inside(module):
            continue
        package = module.rsplit(".", 1)[0]
        if package not in packages:
            packages.append(package)
        packages += [p for p in _sub_config_packages(sub) if p not in packages]
    return packages


def vendored_modules_for(model: Any, processor: Any) -> dict[str, VendoredModule]:
    """The hf_mltm modules an exported folder of ``model`` and ``processor`` needs, rewritten as flat files.

    Entry modules are those of the config, model, processor and sub-processor classes that belong to hf_mltm; the
    configuration module additionally imports the packages that register the model types of hf_mltm sub-configs.

    Args:
        model (`PreTrainedModel`): an hf_mltm model (`MLTMAudioTextModel`, `OMITImageTextModel`, ...).
        processor (`ProcessorMixin`): its processor.

    Returns:
        `dict[str, VendoredModule]`: see :func:`hf_mltm.hub.vendor.collect_vendored_modules`.

    Raises:
        ValueError: the model is not an hf_mltm model, or an import cannot be vendored.
    """
    config_module = type(model.config).__module__
    if not _inside(type(model).__module__) or not _inside(config_module):
        raise ValueError(f"model is a {type(model).__name__} from {type(model).__module__}: export_pretrained "
                         f"vendors hf_mltm code and needs an hf_mltm model (MLTMAudioTextModel, OMITImageTextModel).")
    entries = [config_module, type(model).__module__]
    entries += [type(part).__module__ for part in _processor_parts(processor) if _inside(type(part).__module__)]
    extra = {config_module: _sub_config_packages(model.config)}
    from hf_mltm import __version__

    return collect_vendored_modules(entries, extra_imports=extra, version=__version__)


# ----------------------------------------------------------------------------------------------------------------------
# JSON files: auto_map entries and local paths


def _json_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.json") if path.is_file())


def _walk(value: Any, where: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """Yields ``(key path, container, key, value)`` for every entry of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            yield path, value, key, item
            yield from _walk(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path = f"{where}[{index}]"
            yield path, value, index, item
            yield from _walk(item, path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def scrub_local_paths(folder: str | Path) -> list[str]:
    """Remove the keys under which transformers records where objects were loaded from (`PATH_KEYS`).

    ``_name_or_path`` of a tower's config holds the local folder the tower was loaded from; on the Hub it is
    filled in at load time, so the exported files do not need it.

    Args:
        folder (`str` or `Path`): an exported folder.

    Returns:
        `list[str]`: the removed entries, as ``"file: key.path"``.
    """
    removed = []
    for path in _json_files(Path(folder)):
        data = json.loads(path.read_text(encoding="utf-8"))
        found = [(where, container, key) for where, container, key, _ in _walk(data)
                 if isinstance(container, dict) and key in PATH_KEYS]
        for where, container, key in reversed(found):
            del container[key]
            removed.append(f"{path.name}: {where}")
        if found:
            _write_json(path, data)
    return removed


def _looks_local(value: str, roots: tuple[str, ...], vocabulary: bool) -> bool:
    if any(root and root in value for root in roots):
        return True
    if vocabulary:  # tokenizer vocabularies hold tokens such as "/", "//" or "/s", which are no paths
        return False
    if value.startswith("~/") or (len(value) > 2 and value[1:3] in (":\\", ":/") and value[0].isalpha()):
        return True
    return os.path.isabs(value) and len(Path(value).parts) >= 2


def find_local_paths(folder: str | Path, roots: tuple[str | Path, ...] = ()) -> list[str]:
    """Every string value of the folder's JSON files that is a local path.

    A local path is an absolute path (``/home/...``, ``C:\\...``), a home path (``~/...``) or any string containing
    one of ``roots``; in ``tokenizer.json``, whose vocabulary holds tokens such as ``"/"``, only the last.

    Args:
        folder (`str` or `Path`): an exported folder.
        roots (`tuple`, *optional*): folders whose appearance in any value counts as a local path (the folder
            itself is always one).

    Returns:
        `list[str]`: ``"file: key.path = value"`` entries (empty when the folder is clean).
    """
    folder = Path(folder)
    root_strings = tuple(str(Path(root)) for root in (folder, folder.resolve(), *roots))
    found = []
    for path in _json_files(folder):
        data = json.loads(path.read_text(encoding="utf-8"))
        for where, _, _, value in _walk(data):
            if isinstance(value, str) and _looks_local(value, root_strings, path.name == "tokenizer.json"):
                found.append(f"{path.name}: {where} = {value!r}")
    return found


def _auto_map_renames(model: Any, processor: Any) -> dict[str, str]:
    """``"<module file>.<Class>"`` as ``save_pretrained`` writes it -> ``"<vendored file>.<Class>"``."""
    renames = {}
    for obj in [model.config, model, *_processor_parts(processor)]:
        cls = type(obj)
        if _inside(cls.__module__):
            old = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
            renames[old] = f"{vendored_file_name(cls.__module__)[: -len('.py')]}.{cls.__name__}"
    return renames


def _registered_auto_model_classes(model: Any) -> list[str]:
    """Names of the transformers ``AutoModel*`` classes that map ``model``'s config class to its class."""
    import transformers

    names = []
    for name in dir(transformers):
        if not name.startswith("AutoModel"):
            continue
        try:
            mapping = getattr(getattr(transformers, name), "_model_mapping", None)
        except Exception:  # a lazily imported Auto class whose backend is missing
            continue
        extra = getattr(mapping, "_extra_content", None) or {}
        if extra.get(type(model.config)) is type(model):
            names.append(name)
    return names


def _fix_auto_maps(folder: Path, model: Any, processor: Any) -> None:
    renames = _auto_map_renames(model, processor)
    model_entry = renames.get(f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}")
    config_entry = renames.get(f"{type(model.config).__module__.rsplit('.', 1)[-1]}.{type(model.config).__name__}")
    for path in _json_files(folder):
        data = json.loads(path.read_text(encoding="utf-8"))
        changed = False
        if path.name == "config.json":
            auto_map = data.setdefault("auto_map", {})
            wanted = {"AutoConfig": config_entry, **{name: model_entry for name in _registered_auto_model_classes(model)}}
            for name, entry in wanted.items():
                if auto_map.get(name) != entry:
                    auto_map[name] = entry
                    changed = True
        for _, _, key, value in list(_walk(data)):
            if key != "auto_map" or not isinstance(value, dict):
                continue
            for auto_class, entry in value.items():
                new = [renames.get(item, item) if isinstance(item, str) else item for item in entry] if isinstance(
                    entry, list) else renames.get(entry, entry)
                if new != entry:
                    value[auto_class] = new
                    changed = True
        if changed:
            _write_json(path, data)


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def _check_folder_code(folder: Path) -> None:
    """Every ``auto_map`` entry names a class of a file in the folder; transformers' loader reaches every file."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    entry_files = set()
    for path in _json_files(folder):
        data = json.loads(path.read_text(encoding="utf-8"))
        for where, _, key, value in _walk(data):
            if key != "auto_map" or not isinstance(value, dict):
                continue
            for auto_class, entry in value.items():
                for item in entry if isinstance(entry, list) else [entry]:
                    if item is None or "--" in item:  # tokenizers may leave a slot empty; "repo--x.Y" is remote
                        continue
                    file_name, _, class_name = item.rpartition(".")
                    code = folder / f"{file_name}.py"
                    if not code.is_file() or class_name not in _top_level_names(code):
                        raise ValueError(f"{path.name}: {where}.{auto_class} = {item!r} names no class of a file in "
                                         f"the exported folder; the export is incomplete.")
                    entry_files.add(code)
    reached = set(entry_files)
    for code in entry_files:
        reached.update(Path(p) for p in get_relative_import_files(code))
    python_files = {path for path in folder.glob("*.py")}
    if python_files - reached:
        names = sorted(path.name for path in python_files - reached)
        raise ValueError(f"{folder}: transformers would not fetch {names} (no `from .x import` line reaches them); "
                         f"the vendored imports are incomplete.")
    for code in sorted(python_files):
        if PACKAGE in get_imports(code):
            raise ValueError(f"{code.name} still imports {PACKAGE} absolutely; the export is not self-contained.")


def python_requirements(folder: str | Path) -> list[str]:
    """The pip distributions the folder's code imports (absolute imports outside the standard library and hf_mltm,
    which the export vendors), sorted.

    Args:
        folder (`str` or `Path`): an exported folder.

    Returns:
        `list[str]`: e.g. ``["numpy", "soundfile", "soxr", "torch", "transformers"]``.
    """
    from transformers.dynamic_module_utils import get_imports

    modules = set()
    for code in Path(folder).glob("*.py"):
        modules.update(get_imports(code))
    return sorted({_DISTRIBUTIONS.get(name, name) for name in modules
                   if name not in sys.stdlib_module_names and name not in ("__future__", PACKAGE)})


def export_pretrained(
    model: Any,
    processor: Any,
    folder: str | Path,
    *,
    model_card: Any = None,
) -> Path:
    """Save ``model`` and ``processor`` into ``folder`` with self-contained remote code and a model card.

    ``AutoModel``, ``AutoProcessor`` (and ``AutoModelForZeroShotImageClassification`` for OMIT) load the folder with
    ``trust_remote_code=True`` on a machine without hf_mltm; the zero-shot pipelines work on it. The weights are
    those of ``model`` unchanged, so the loaded model gives exactly the same logits. What is vendored and why:
    ``docs/hub.md``.

    Args:
        model (`PreTrainedModel`): an hf_mltm model (`MLTMAudioTextModel`, `OMITImageTextModel`).
        processor (`ProcessorMixin`): its processor (`MLTMProcessor`, `OMITProcessor`).
        folder (`str` or `Path`): where to write; created if missing, and it must be empty.
        model_card (`huggingface_hub.ModelCard` or `str`, *optional*): the card written as ``README.md``; default
            :func:`hf_mltm.hub.model_card.build_model_card` for the model (licences, usage, citations, no metrics).

    Returns:
        `Path`: ``folder``.

    Raises:
        ValueError: ``folder`` is not empty, ``processor`` is missing, the model is not an hf_mltm model, an import
            cannot be vendored, or a saved file would record a local path (the message names the file and key).
    """
    folder = Path(folder)
    if processor is None:
        raise ValueError("processor is None: export_pretrained needs the model's processor (MLTMProcessor, "
                         "OMITProcessor) so that AutoProcessor and the pipelines load the folder.")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"folder={str(folder)!r} exists and is not an empty folder; export into a new folder.")
    modules = vendored_modules_for(model, processor)  # fails on unsupported imports before anything is written
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end: a failed export leaves no half-written folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        _write_export(model, processor, modules, staging, model_card, roots=(str(folder), str(folder.resolve())))
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_export(model: Any, processor: Any, modules: dict[str, VendoredModule], folder: Path, model_card: Any,
                  roots: tuple[str, ...]) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for code in folder.glob("*.py"):  # save_pretrained's copies import hf_mltm; the vendored files replace them
        code.unlink()
    write_vendored_modules(modules, folder)
    _fix_auto_maps(folder, model, processor)
    scrub_local_paths(folder)
    leaks = find_local_paths(folder, roots=roots + tuple(_source_folders(model, processor)))
    if leaks:
        raise ValueError("the exported files record local paths, which mean nothing on another machine: "
                         + "; ".join(leaks) + ". Clear these fields before exporting.")
    _check_folder_code(folder)
    if model_card is None:
        from .model_card import build_model_card

        model_card = build_model_card(folder)
    text = model_card.content if hasattr(model_card, "content") else str(model_card)
    # The card's install line names what this folder's (vendored) code imports.
    install = "Needs `pip install " + " ".join(python_requirements(folder)) + "`."
    (folder / "README.md").write_text(re.sub(r"^Needs `pip install [^`\n]*`\.$", lambda _: install, text,
                                             flags=re.MULTILINE), encoding="utf-8")


def _source_folders(model: Any, processor: Any) -> list[str]:
    """Local folders the model, its towers or the processor were loaded from (to be kept out of the export)."""
    folders = []
    configs = [model.config] + [getattr(model.config, key, None) for key in getattr(model.config, "sub_configs", {})]
    for config in configs:
        value = getattr(config, "_name_or_path", "") or ""
        if value and os.path.isdir(value):
            folders.append(value)
    for part in _processor_parts(processor):
        value = getattr(part, "name_or_path", "") or ""
        if isinstance(value, str) and value and os.path.isdir(value):
            folders.append(value)
    return folders
