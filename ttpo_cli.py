"""The installed `ttpo` command: one entry point, a subcommand per tool (`python -m ...` keeps working).

    ttpo app --port 7860            ttpo batch --input-dir DIR --out-dir OUT      ttpo tpo --input IMG --out DIR
    ttpo evaluate ...               ttpo export --db URL --out DIR                ttpo --help
Each subcommand's options are its module's own (`ttpo SUBCOMMAND --help`). Offline by default: no model hub is
reached unless `ttpo --online SUBCOMMAND ...` (or TTPO_ONLINE=1) asks for it (restoration/offline.py).
"""
from __future__ import annotations

import importlib
import os
import sys

#: subcommand -> (module, one line). Modules are imported only when their subcommand runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "app": ("app", "the web app: annotation page, REST API, studies, admin"),
    "tpo": ("restoration.tpo", "TTPO rounds on one image, headless"),
    "batch": ("restoration.batch", "automatic TTPO over every image of a folder"),
    "evaluate": ("restoration.evaluate", "PSNR/SSIM of a backbone on degraded photos"),
    "evaluate-prior": ("restoration.evaluate_prior", "a diffusion prior's denoising at the candidates' noise"),
    "bench": ("restoration.bench", "time one round, stage by stage"),
    "train": ("restoration.training.sipl", "train the SIPL network"),
    "train-prior": ("restoration.training.prior", "train the pixel diffusion prior"),
    "export": ("feedback.analysis.export", "the preference dataset (Parquet or JSONL)"),
    "analysis": ("feedback.analysis.report", "study analysis: win rates, Bradley-Terry, agreement"),
    "study": ("feedback.studies.service", "create and manage user studies"),
    "regenerate": ("feedback.loop.regenerate", "recompute a recorded round and compare it with the stored images"),
    "integrity": ("feedback.ops.integrity", "check a database and its image files"),
    "loadtest": ("feedback.ops.loadtest", "load-test a running app"),
    "db": ("feedback.record.db", "database migrations"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: ttpo [--online] SUBCOMMAND [options]   (ttpo SUBCOMMAND --help for its options)", "",
             "--online: allow model hub downloads (default: offline)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_module, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--online"]:
        os.environ["TTPO_ONLINE"] = "1"  # before restoration / feedback are imported
        args = args[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        close = [n for n in SUBCOMMANDS if n.startswith(name[:3])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"ttpo: unknown subcommand {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"ttpo {name}", *rest]
    result = module.main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
