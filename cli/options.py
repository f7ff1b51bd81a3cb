"""CLI flags generated from the job spec (core.jobspec.JobSpec): one name, help text, default and range each.

`--max-image-size` means the same in `reconstruct`, `train`, `poses` and `submit` as `max_image_size` over
HTTP. A flag left out takes the spec's default (shown in --help); values are validated by the spec itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from core.errors import UserInputError
from core.jobspec import JobSpec, describe

TRAIN_OPTIONS = ("max_image_size", "preset", "steps", "device", "model", "feature_dim", "upsample", "skip_kernel",
                 "margin_loss", "composition", "scene_mode", "sampler", "pixel_sampling", "backend", "eval_views",
                 "eval_max_side")
POSES_OPTIONS = ("max_image_size", "matcher")
EXPORT_OPTIONS = ("outputs", "mesh_method", "mesh_part", "mesh_resolution", "mesh_face_budget", "frames", "fps",
                  "view_max_side", "depth_max_side", "depth_views", "fusion_max_side", "device")
ALL_OPTIONS = tuple(n for n in JobSpec.model_fields if n != "webhook_url")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choices(annotation) -> tuple | None:
    """The allowed values of a Literal (or Literal | None) field, else None."""
    args = [annotation]
    if get_origin(annotation) is not Literal:
        args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and get_origin(args[0]) is Literal:
        return get_args(args[0])
    return None


def add_spec_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add `--name` for each JobSpec field in `names`, with its help text, choices and default."""
    group = parser.add_argument_group("job options (the same names and defaults as the HTTP API's options)")
    for name in names:
        field = JobSpec.model_fields[name]
        default = field.default_factory() if field.default_factory else field.default
        shown = ",".join(default) if isinstance(default, list) else ("none" if default is None else default)
        kw: dict = {"dest": name, "default": None, "help": f"{field.description} (default: {shown})"}
        choices = _choices(field.annotation)
        if get_origin(field.annotation) is list:
            kind = _choices(get_args(field.annotation)[0]) or ()
            kw.update(metavar="A,B", help=f"{field.description}: comma-separated, from {','.join(kind)} "
                                          f"(default: {shown})")
        elif choices is not None:
            kw.update(choices=choices, type=type(choices[0]))
        elif name == "webhook_url":
            kw.update(metavar="URL")
        else:
            kw.update(type=int, metavar="N")
        group.add_argument(flag(name), **kw)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The spec options set on the command line, as JobSpec values (lists split at commas)."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if get_origin(JobSpec.model_fields[name].annotation) is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[name] = value
    return out


def spec_from_args(args: argparse.Namespace, names: Iterable[str], base: dict | None = None) -> JobSpec:
    """The JobSpec of `base` plus the options given on the command line; a UserInputError names what was wrong."""
    try:
        return JobSpec.model_validate({**(base or {}), **given(args, names)})
    except ValidationError as e:
        raise UserInputError("invalid_options", f"options: {describe(e)}",
                             "See `nerfserve COMMAND --help` for the allowed values.") from None


def options_markdown() -> str:
    """The job options as a Markdown table (docs/api.md carries it; a test keeps the two equal)."""
    from core.jobspec import STAGE_OF_OPTION

    rows = ["| option | values | default | re-runs from |", "| --- | --- | --- | --- |"]
    for name, field in JobSpec.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        if get_origin(field.annotation) is list:
            values = "any of " + ", ".join(f"`{c}`" for c in _choices(get_args(field.annotation)[0]))
        elif (choices := _choices(field.annotation)) is not None:
            values = ", ".join(f"`{c}`" for c in choices)
        elif name == "webhook_url":
            values = "http(s) URL"
        else:
            lo = next(m.ge for m in field.metadata if hasattr(m, "ge"))
            hi = next(m.le for m in field.metadata if hasattr(m, "le"))
            values = f"integer {lo}..{hi}"
        shown = "none" if default is None else "`" + (",".join(default) if isinstance(default, list) else
                                                      str(default)) + "`"
        rows.append(f"| `{name}` | {values}: {field.description} | {shown} | {STAGE_OF_OPTION[name] or '-'} |")
    return "\n".join(rows)
