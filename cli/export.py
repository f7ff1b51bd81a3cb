"""CLI: export (depth, meshes, point clouds, views, video).

    nerfserve export RUN_DIR --outputs depth,mesh,tsdf,pointcloud,views,video [--mesh-resolution 256]
                     [--path orbit|spiral|interp|FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.options import EXPORT_OPTIONS, add_spec_options, spec_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export depth maps, meshes, point clouds, novel views and video",
                       description="Write the exports of a trained run under RUN_DIR/outputs (or --out), "
                                   "with a manifest.json listing every file with its sha256.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run (what `nerfserve train` wrote)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/outputs)")
    p.add_argument("--path", default="orbit", help="camera path of the novel views: orbit, spiral, interp, or a JSON "
                   "file (nerfstudio camera path, or {c2w: [...], intrinsics: {...}}) (default: orbit)")
    p.add_argument("--capture", type=Path, default=None,
                   help="the posed capture (transforms.json folder): colour meshes from the photos")
    add_spec_options(p, EXPORT_OPTIONS)
    p.set_defaults(func=run_export)


def config_from_args(args: argparse.Namespace):
    """The ExportConfig of the job options given on the command line (core.jobspec.export_config)."""
    from core.jobspec import export_config

    # The scene decides whether it has a foreground field; the spec's composition check is for training.
    base = {"composition": "on"} if args.mesh_part == "foreground" else {}
    return export_config(spec_from_args(args, EXPORT_OPTIONS, base), path=args.path)


def find_scene_dir(run_dir: Path) -> Path:
    """The folder holding scene.json: RUN_DIR/scene (what `nerfserve train --out RUN_DIR` writes) or RUN_DIR."""
    from core.errors import UserInputError

    for candidate in (run_dir / "scene", run_dir):
        if (candidate / "scene.json").is_file():
            return candidate
    if not run_dir.is_dir():
        raise UserInputError("run_dir_missing", f"run folder {run_dir} does not exist.",
                             "Give the folder `nerfserve train --out` wrote.")
    raise UserInputError("run_not_trained", f"{run_dir} holds no trained scene (no scene/scene.json).",
                         "Train first: nerfserve train DATA --out RUN_DIR, then export RUN_DIR.")


def run_export(args: argparse.Namespace) -> int:
    from core.errors import UserInputError
    from core.export.pipeline import export_all
    from core.progress import ProgressEvent

    config = config_from_args(args)  # validate before loading anything heavy
    if args.path not in ("orbit", "spiral", "interp") and not Path(args.path).is_file():
        raise UserInputError("camera_path_missing", f"camera path file {args.path} does not exist.",
                             "Give orbit, spiral, interp or the path of a camera-path JSON file.")
    scene_dir = find_scene_dir(args.run_dir)
    from core.scene.load import load_scene

    scene = load_scene(scene_dir, device=args.device or "auto")
    capture = None
    if args.capture is not None:
        from core.dataparsers.readers import load_capture

        capture = load_capture(args.capture)
    out = args.out or args.run_dir / "outputs"

    def show(ev: ProgressEvent) -> None:
        print(f"[{ev.fraction * 100:5.1f}%] {ev.message}", file=sys.stderr)

    manifest = export_all(scene, out, config, progress=show, capture=capture)
    kinds: dict[str, int] = {}
    for f in manifest["files"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    print(f"wrote {len(manifest['files'])} files to {out} ("
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f"); manifest: {out / 'manifest.json'}")
    return 0
