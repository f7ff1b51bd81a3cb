"""CLI: export (depth, meshes, point clouds, views, video).

    nerfserve export RUN_DIR --what depth,mesh,tsdf,pointcloud,views,video [--mesh-resolution 256]
                     [--path orbit|spiral|interp|FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WHAT_ALL = "depth,mesh,tsdf,pointcloud,views,video"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export depth maps, meshes, point clouds, novel views and video",
                       description="Write the exports of a trained run under RUN_DIR/outputs (or --out), "
                                   "with a manifest.json listing every file with its sha256.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run (what `nerfserve train` wrote)")
    p.add_argument("--what", default=None,
                   help=f"comma-separated subset of {WHAT_ALL} (default: depth, mesh, pointcloud, views, video)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/outputs)")
    p.add_argument("--mesh-resolution", type=int, default=256, help="marching-cubes samples on the long side")
    p.add_argument("--mesh-method", choices=("density", "tsdf"), default=None,
                   help="how 'mesh' is extracted (default: the one that measures better)")
    p.add_argument("--mesh-part", choices=("all", "foreground"), default="all",
                   help="foreground: only the foreground field (models trained with --composition on)")
    p.add_argument("--face-budget", type=int, default=None, help="decimate meshes to at most this many faces")
    p.add_argument("--path", default="orbit", help="camera path: orbit, spiral, interp, or a JSON file "
                   "(nerfstudio camera path, or {c2w: [...], intrinsics: {...}})")
    p.add_argument("--frames", type=int, default=60, help="frames along a generated path")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--view-max-side", type=int, default=720, help="long side of novel views in pixels")
    p.add_argument("--depth-max-side", type=int, default=None, help="cap the depth maps' long side")
    p.add_argument("--depth-views", choices=("all", "train", "test"), default="all",
                   help="which capture cameras get depth maps (test: the held-out views)")
    p.add_argument("--fusion-max-side", type=int, default=256,
                   help="long side of the internal renders for TSDF, mesh level and colours, point cloud")
    p.add_argument("--capture", type=Path, default=None,
                   help="the posed capture (transforms.json folder): colour meshes from the photos")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run_export)


def config_from_args(args: argparse.Namespace):
    from core.export import ExportConfig

    overrides = {"mesh_resolution": args.mesh_resolution, "mesh_face_budget": args.face_budget,
                 "path": args.path, "n_frames": args.frames, "fps": args.fps,
                 "view_max_side": args.view_max_side, "depth_max_side": args.depth_max_side,
                 "fusion_max_side": args.fusion_max_side, "mesh_part": args.mesh_part,
                 "depth_views": args.depth_views}
    if args.what:
        overrides["what"] = args.what
    if args.mesh_method:
        overrides["mesh_method"] = args.mesh_method
    return ExportConfig(**overrides)


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
    from core.export import export_all
    from core.progress import ProgressEvent

    config = config_from_args(args)  # validate before loading anything heavy
    if args.path not in ("orbit", "spiral", "interp") and not Path(args.path).is_file():
        raise UserInputError("camera_path_missing", f"camera path file {args.path} does not exist.",
                             "Give orbit, spiral, interp or the path of a camera-path JSON file.")
    scene_dir = find_scene_dir(args.run_dir)
    from core.scene.load import load_scene

    scene = load_scene(scene_dir, device=args.device)
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
