"""MkDocs hooks of the p2pmtl documentation.

- ``reference/config.md`` is generated at build time from the pydantic config models
  (:class:`p2pmtl.experiments.config.ExperimentConfig` and the tables it nests, the config
  model of every registered task, the ``[sweep]`` table and study files): every key with its
  type, default, allowed range and description, so the page cannot drift from the code.
- the README's result figures (``experiments/figures/*.png``) are served as ``figures/*.png``
  without copying them into ``docs/``.

``tests/test_docs.py`` imports this file to check that every key has a description
(:func:`missing_descriptions`).
"""
from __future__ import annotations

import inspect
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PAGE = "reference/config.md"
FIGURES = ROOT / "experiments" / "figures"


# --------------------------------------------------------------------------- the models


def _base_model():
    from pydantic import BaseModel

    return BaseModel


def roots() -> list[tuple[str, str, type, str]]:
    """(section title, key prefix, model, introduction) of every documented file or table."""
    from p2pmtl.experiments.config import ExperimentConfig
    from p2pmtl.experiments.study import StudyConfig
    from p2pmtl.experiments.sweep import SweepSpec

    return [
        ("Experiment file", "", ExperimentConfig,
         "The top level of an experiment TOML file (`p2pmtl run FILE`). Tables below are nested "
         "keys: `[rules]`, `[[scenarios]]`, `[network]`, ..."),
        ("Sweep table", "sweep", SweepSpec,
         "The `[sweep]` table of a sweep config (an experiment config plus this table; "
         "`p2pmtl sweep FILE`)."),
        ("Study file", "", StudyConfig,
         "A study file (`p2pmtl study FILE`): variants of experiment configs run into one folder "
         "and compared."),
    ]


def task_models() -> list[tuple[str, str, type]]:
    """(task name, description, config model) of every registered task."""
    from p2pmtl.tasks import TASKS

    out = []
    for entry in TASKS.entries():
        model = (entry.extra or {}).get("config")
        if model is not None:
            out.append((entry.name, entry.description, model))
    return out


def _models_in(ann: Any) -> list[type]:
    BaseModel = _base_model()
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type] = []
    for a in typing.get_args(ann):
        out += _models_in(a)
    return out


def _is_list(ann: Any) -> bool:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return any(_is_list(a) for a in args)
    return origin is list


def walk(model: type, prefix: str, seen: Optional[dict] = None) -> Iterator[tuple[str, type, str, Any]]:
    """(table path, model, key, FieldInfo) of ``model`` and every model nested in it, depth
    first, each model once (``seen``: model -> the paths it was met at). A path ends in
    ``[]`` where the table is an item of a list (``scenarios[]``: ``[[scenarios]]``)."""
    seen = {} if seen is None else seen
    if model in seen:
        seen[model].append(prefix)
        return
    seen[model] = [prefix]
    for name, field in model.model_fields.items():
        yield prefix, model, name, field
    for name, field in model.model_fields.items():
        for sub in _models_in(field.annotation):
            path = f"{prefix}.{name}" if prefix else name
            yield from walk(sub, path + ("[]" if _is_list(field.annotation) else ""), seen)


def table_name(path: str) -> str:
    """``scenarios[].attack`` -> ``[scenarios.attack]``; ``scenarios[]`` -> ``[[scenarios]]``."""
    if not path:
        return "top level"
    bare = path.replace("[]", "")
    return f"[[{bare}]]" if path.endswith("[]") else f"[{bare}]"


def all_fields() -> Iterator[tuple[str, type, str, Any]]:
    """Every documented key: the files' models, then every task's config model."""
    seen: dict = {}
    for _, prefix, model, _ in roots():
        yield from walk(model, prefix, seen)
    for name, _, model in task_models():
        yield from walk(model, "task", seen)


def missing_descriptions() -> list[str]:
    """``Model.key (table)`` of every key without a description."""
    return [f"{model.__module__}.{model.__qualname__}.{name} ([{prefix or 'top level'}])"
            for prefix, model, name, field in all_fields() if not (field.description or "").strip()]


# --------------------------------------------------------------------------- rendering pieces

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "none"}


def _anchor(model: type) -> str:
    return "cfg-" + re.sub(r"[^a-z0-9]+", "-", model.__qualname__.lower()).strip("-")


def type_text(ann: Any) -> str:
    """A short, readable type: ``list of integer``, ``number or none``, a link to a table."""
    BaseModel = _base_model()
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any:
        return "any"
    if ann in _SCALARS:
        return _SCALARS[ann]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[table](#{_anchor(ann)})"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        kinds = {type(a) for a in args}
        return " or ".join(sorted(_SCALARS.get(k, k.__name__) for k in kinds))
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + " or none" if type(None) in args else text
    if origin in (list, typing.List):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return "(" + ", ".join(type_text(a) for a in args) + ")"
    if origin in (dict, typing.Dict):
        return "table" if not args else f"table of {type_text(args[1])}"
    return getattr(ann, "__name__", str(ann))


def _num(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:g}"
    return str(v)


def _bounds(metadata: list) -> list[str]:
    out = []
    for m in metadata:
        sub = getattr(m, "metadata", None)
        if isinstance(sub, list):  # a FieldInfo inside Annotated
            out += _bounds(sub)
            continue
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None and type(m).__name__.lower() == attr:
                out.append(f"{sym} {_num(v)}")
        if type(m).__name__ == "MinLen":
            out.append(f"at least {m.min_length} item{'s' if m.min_length != 1 else ''}")
        if type(m).__name__ == "MaxLen":
            out.append(f"at most {m.max_length} items")
        if getattr(m, "allow_inf_nan", None) is False:
            out.append("finite")
    return out


def _inner_bounds(ann: Any) -> list[str]:
    """Bounds of the items of a list or tuple, and of an Annotated type."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _bounds(list(args[1:]))
    if origin in (Union, types.UnionType):
        out: list[str] = []
        for a in args:
            out += _inner_bounds(a)
        return out
    if origin in (list, tuple):
        inner: list[str] = []
        for a in args:
            if a is Ellipsis:
                continue
            for b in _inner_bounds(a) + _literal_choices(a):
                b = b.removeprefix("each ")
                if b not in inner:
                    inner.append(b)
        return [f"each {b}" for b in inner]
    return []


def _literal_choices(ann: Any) -> list[str]:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return ["one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)]
    if origin in (Union, types.UnionType):
        out: list[str] = []
        for a in args:
            out += _literal_choices(a)
        return out
    return []


def allowed_text(field: Any) -> str:
    ann = field.annotation
    parts = _literal_choices(ann) + _bounds(list(field.metadata)) + _inner_bounds(ann)
    return "; ".join(dict.fromkeys(parts))


def _toml(v: Any) -> str:
    BaseModel = _base_model()
    if isinstance(v, BaseModel):
        name = getattr(v, "name", None)
        return f'name = "{name}"' if isinstance(name, str) and "name" in type(v).model_fields else "(table)"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}" if v else "{}"
    return str(v)


def default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except Exception:  # noqa: BLE001  (a factory that needs context)
            return "(computed)"
    else:
        value = field.default
    BaseModel = _base_model()
    if isinstance(value, BaseModel):
        return "(table)" if "name" not in type(value).model_fields else _toml(value)
    if isinstance(value, list) and value and all(isinstance(x, BaseModel) for x in value):
        return "[" + ", ".join(_toml(x) for x in value) + "]"
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    """Text for a table cell: no pipes or newlines, and no ``<`` outside code spans (it would
    open an HTML tag)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def table(model: type, prefix: str) -> str:
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        ann = field.annotation
        kind = type_text(ann)
        if name == "task" and ann is Any:
            kind = "[table](#tasks)"
        key = f"`{prefix}.{name}`" if prefix else f"`{name}`"
        rows.append("| " + " | ".join(_cell(x) for x in (key, kind, default_text(field), allowed_text(field),
                                                         field.description or "")) + " |")
    if (model.model_config or {}).get("extra") == "allow":
        what = {"GraphConfig": "the family's parameters", "AttackConfig": "the attack's parameters",
                "SweepAttack": "the attack's parameters"}.get(model.__name__, "the component's parameters")
        anchor = "#params-graph" if model.__name__ == "GraphConfig" else "#params-attack"
        rows.append(f"| other keys | | | | {what}: see [component parameters]({anchor}) |")
    return "\n".join(rows)


def _doc(model: type) -> str:
    """The model's own docstring (not one inherited from a base class), in Markdown."""
    doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
    return re.sub(r"``([^`]+)``", r"`\1`", doc)


# --------------------------------------------------------------------------- component parameters


def _signature_rows(obj: Any, skip: tuple[str, ...] = ("self",)) -> list[str]:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(obj if not inspect.isclass(obj) else obj.__init__, include_extras=True)
    except Exception:  # noqa: BLE001
        hints = {}
    out = []
    for p in params.values():
        if p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = hints.get(p.name, p.annotation)
        default = "required" if p.default is p.empty else f"`{_toml(p.default)}`"
        bounds = "; ".join(_inner_bounds(ann) + _literal_choices(ann)) if ann is not p.empty else ""
        desc = ""
        for m in typing.get_args(ann)[1:] if typing.get_origin(ann) is typing.Annotated else ():
            desc = getattr(m, "description", None) or desc
        if desc == "number of agents" and p.name != "n":  # the shared `Nodes` type of graph families
            desc = ""
        kind = type_text(ann) if ann is not p.empty else ""
        out.append(f"`{p.name}` ({kind}{', ' if kind else ''}{default}{'; ' + bounds if bounds else ''})"
                   f"{': ' + desc if desc else ''}")
    return out


def components_section() -> str:
    from p2pmtl.graphs.families import GRAPHS
    from p2pmtl.robust.attacks import ATTACKS
    from p2pmtl.rules.combine import COMBINES
    from p2pmtl.rules.weights import RULES

    lines = ["## Component parameters", "",
             "Keys of tables whose other keys are a component's parameters (generated from the "
             "registered components: `p2pmtl list` shows the same names, plugins included).", ""]
    sections = [
        ("graph", "Graph families (`[graph] family = ...`, parameters as keys of `[graph]`)", GRAPHS, False),
        ("attack", "Attacks (`attack = { name = ..., parameters }` of a scenario or a sweep row)", ATTACKS, True),
        ("rules", "Weight rules (`[rules] names`; parameters in `rules.params.<rule>`)", RULES, True),
        ("combine", "Combine steps (`[rules] combine`; parameters in `rules.combine_params`)", COMBINES, True),
    ]
    for anchor, title, registry, is_class in sections:
        lines += [f"### {title} {{ #params-{anchor} }}", "", "| name | parameters | description |", "|---|---|---|"]
        for entry in registry.entries():
            obj = entry.obj.__init__ if is_class else entry.obj
            skip = ("self", "nu", "init_score") if anchor == "rules" else ("self",)
            params = _signature_rows(obj, skip)
            lines.append(f"| `{entry.name}` | {_cell('; '.join(params)) or '(none)'} | {_cell(entry.description)} |")
        lines.append("")
    lines += ["Aggregators and pre-aggregation steps of server mode take their parameters from "
              "`server.aggregator_params` (and `server.f`); see [Aggregators](aggregators.md).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the page


def _model_section(lines: list[str], title: str, model: type, paths: list[str], intro: str = "") -> None:
    lines += [f"### {title} {{ #{_anchor(model)} }}", ""]
    if intro:
        lines += [intro, ""]
    others = list(dict.fromkeys(f"`{table_name(p)}`" for p in paths[1:]))
    if others:
        lines += [f"Also used as {', '.join(others)}.", ""]
    doc = _doc(model)
    if doc:
        lines += [doc, ""]
    lines += [table(model, ""), ""]


def render() -> str:
    """The configuration reference page (Markdown)."""
    lines = ["# Configuration reference", "",
             "Generated from the config models when the documentation is built: every key with its type, "
             "default, allowed values and description. A config is checked against these models before any "
             "work starts; an unknown key, a wrong type or an out-of-range value is an error naming the key. "
             "Override any key from the command line with `--set KEY=VALUE` (list items by index: "
             "`--set scenarios.1.byzantine=5`) or in Python with `overrides=[...]`.", ""]
    seen: dict = {}
    for title, prefix, model, intro in roots():
        lines += [f"## {title}", "", intro, ""]
        order = list(dict.fromkeys(sub for _, sub, _, _ in walk(model, prefix, seen)))
        for sub in order:
            _model_section(lines, f"`{table_name(seen[sub][0])}`" if seen[sub][0] else "Top level", sub, seen[sub])
    lines += ["## Tasks { #tasks }", "",
              "The `[task]` table: `name` picks a registered task, the other keys are that task's settings "
              "(default: `target_localization`).", ""]
    for name, description, model in task_models():
        order = list(dict.fromkeys(sub for _, sub, _, _ in walk(model, "task", seen)))
        for sub in order:
            title = f'`[task] name = "{name}"`' if sub is model else f"`{table_name(seen[sub][0])}` ({name})"
            _model_section(lines, title, sub, seen[sub], description if sub is model else "")
    lines.append(components_section())
    return "\n".join(lines)


# --------------------------------------------------------------------------- mkdocs events


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, CONFIG_PAGE, content=render()))
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files
