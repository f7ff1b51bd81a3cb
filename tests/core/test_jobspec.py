"""The job spec is the one definition of every option: the CLI, the HTTP schema and the configs agree with it."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from cli import build_parser
from core.errors import UserInputError
from core.jobspec import STAGE_OF_OPTION, JobSpec, export_config, train_config
from core.pipeline import STAGES, first_stage_for_changes


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _spec_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest in JobSpec.model_fields}


@pytest.mark.parametrize("command", ["reconstruct", "submit", "train", "export", "poses"])
def test_cli_flags_are_the_specs_names_choices_and_defaults(command):
    flags = _spec_flags(_subparser(command))
    assert flags, command
    for name, action in flags.items():
        field = JobSpec.model_fields[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default is None                     # left out: the spec's default applies
        default = field.default_factory() if field.default_factory else field.default
        shown = ",".join(default) if isinstance(default, list) else ("none" if default is None else default)
        assert f"(default: {shown})" in action.help
        schema = JobSpec.model_json_schema()["properties"][name]
        if "enum" in schema:
            assert list(action.choices) == schema["enum"]


def test_reconstruct_and_submit_take_every_option():
    every = set(JobSpec.model_fields)
    assert set(_spec_flags(_subparser("reconstruct"))) == every - {"webhook_url"}
    assert set(_spec_flags(_subparser("submit"))) == every


def test_the_http_schema_is_the_spec():
    from api.app import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir="/nonexistent-nerfserve-test", redis_url="redis://127.0.0.1:1/0"))
    schemas = app.openapi()["components"]["schemas"]
    served, ours = schemas["JobSpec"]["properties"], JobSpec.model_json_schema()["properties"]
    assert set(served) == set(ours)

    def facts(prop: dict) -> dict:
        """Names, choices, ranges and defaults, however the generator spells numbers and nulls."""
        kinds = prop.get("anyOf", [prop])
        out = {"default": prop.get("default"), "stage": prop.get("stage")}
        for k in kinds:
            for key in ("enum", "const", "minimum", "maximum", "minLength", "maxLength", "type"):
                if key in k:
                    out.setdefault(key, []).append(k[key])
        return out

    for name in ours:
        assert facts(served[name]) == facts(ours[name]), name
    assert schemas["CommitIn"]["properties"]["options"]["$ref"].endswith("/JobSpec")


@pytest.mark.parametrize("bad", [{"steps": True}, {"steps": "100"}, {"steps": 100.0}, {"upsample": 4.0},
                                 {"upsample": True}, {"composition": True}, {"max_image_size": 10},
                                 {"mesh_resolution": 4096}, {"outputs": []}, {"outputs": ["mesh", "mesh"]},
                                 {"colour": "red"}, {"mesh_part": "foreground"}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValidationError):
        JobSpec.model_validate(bad)


def test_a_bad_stored_spec_is_a_user_error_and_auto_device_is_replaced():
    with pytest.raises(UserInputError) as e:
        JobSpec.from_store({"steps": "many"})
    assert e.value.code == "invalid_options" and "steps" in e.value.message
    assert JobSpec.from_store({}, device="cuda").device == "cuda"
    assert JobSpec.from_store({"device": "cpu"}, device="cuda").device == "cpu"


def test_configs_carry_the_spec():
    spec = JobSpec(preset="fast", steps=120, max_image_size=240, model="feature_field", upsample=2, device="cpu",
                   outputs=["depth", "video"], mesh_resolution=64, frames=5, view_max_side=96, mesh_method="tsdf")
    cfg = train_config(spec)
    assert (cfg.steps, cfg.max_side, cfg.model, cfg.upsample, cfg.device) == (120, 240, "feature_field", 2, "cpu")
    assert cfg.checkpoint_every == 12
    ex = export_config(spec)
    assert (ex.what, ex.mesh_resolution, ex.n_frames, ex.view_max_side, ex.mesh_method) == \
        (("depth", "video"), 64, 5, 96, "tsdf")


def test_every_option_names_the_stage_it_invalidates():
    assert set(STAGE_OF_OPTION) == set(JobSpec.model_fields)
    assert all(s is None or s in STAGES for s in STAGE_OF_OPTION.values())
    old = JobSpec().to_store()
    assert first_stage_for_changes(old, {**old, "mesh_resolution": 128}) == "export"
    assert first_stage_for_changes(old, {**old, "steps": 10, "mesh_resolution": 128}) == "train"
    assert first_stage_for_changes(old, {**old, "matcher": "sequential"}) == "poses"
    assert first_stage_for_changes(old, {**old, "webhook_url": "http://example.org/hook"}) is None
    assert first_stage_for_changes(old, old) is None


def test_the_api_docs_carry_the_specs_option_table():
    from pathlib import Path

    from cli.options import options_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert options_markdown() in doc
    assert all(f"| `{name}` |" in options_markdown() for name in JobSpec.model_fields)


def test_the_configs_share_the_specs_defaults_and_ranges():
    """Where a config validates an option itself, it takes the spec's range; its defaults are the spec's."""
    from core.export.config import MESH_RESOLUTION_RANGE, ExportConfig
    from core.models.config import EVAL_MAX_SIDE_RANGE, EVAL_VIEWS_MAX, TrainConfig

    bounds = {name: {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in f.metadata
                     if type(m).__name__ in ("Ge", "Le")} for name, f in JobSpec.model_fields.items()}
    assert bounds["mesh_resolution"] == {"Ge": MESH_RESOLUTION_RANGE[0], "Le": MESH_RESOLUTION_RANGE[1]}
    assert bounds["eval_views"]["Le"] == EVAL_VIEWS_MAX and bounds["eval_max_side"]["Le"] == EVAL_MAX_SIDE_RANGE[1]
    for bad in (MESH_RESOLUTION_RANGE[0] - 1, MESH_RESOLUTION_RANGE[1] + 1):
        with pytest.raises(UserInputError):
            ExportConfig(mesh_resolution=bad)
    spec, train, export = JobSpec(), TrainConfig(), ExportConfig()
    assert (spec.eval_views, spec.eval_max_side) == (train.eval_views, train.eval_max_side)
    for name, field in (("view_max_side", "view_max_side"), ("fps", "fps"), ("frames", "n_frames"),
                        ("fusion_max_side", "fusion_max_side"), ("mesh_resolution", "mesh_resolution"),
                        ("depth_views", "depth_views"), ("depth_max_side", "depth_max_side")):
        assert getattr(spec, name) == getattr(export, field), name
