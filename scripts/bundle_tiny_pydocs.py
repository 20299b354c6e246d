"""Copy the tiny-pydocs models into examples/tiny-pydocs in half precision, checking the 32 MB limit.

    python scripts/bundle_tiny_pydocs.py --runs runs/tiny-pydocs --output examples/tiny-pydocs [--num-iterations N]

Writes ``mdlm/`` (the source MDLM in the kuleshov-group/mdlm-owt layout), ``cofre/`` (the
converted, adapted and consistency-trained model), ``evaluator/`` (the GPT-2 that scores samples)
and ``heldout.txt`` (held-out text from the corpus). Each model folder carries its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import mgm2fp
from mgm2fp.saving import atomic_directory

LIMIT_BYTES = 32 * 1024 * 1024
HELDOUT_CHARACTERS = 20_000
EVALUATOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "evaluation.json")


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--cofre", type=Path, default=None, help="default: RUNS/cofre")
    parser.add_argument("--num-iterations", type=int, default=None, help="default fixed-point depth stored in the bundled CoFRe config")
    args = parser.parse_args()

    with atomic_directory(args.output, overwrite=True) as folder:
        shutil.copytree(args.runs / "mdlm", folder / "mdlm")

        cofre = mgm2fp.load(args.cofre or args.runs / "cofre", dtype="float16")
        if args.num_iterations is not None:
            cofre.num_iterations = args.num_iterations
        cofre.metadata.setdefault("source", {})["id"] = "examples/tiny-pydocs/mdlm"
        with tempfile.TemporaryDirectory() as scratch:
            mgm2fp.save_pretrained(cofre, Path(scratch) / "cofre")
            shutil.copytree(Path(scratch) / "cofre", folder / "cofre")

        (folder / "evaluator").mkdir()
        for name in EVALUATOR_FILES:
            if (args.runs / "evaluator" / name).is_file():
                shutil.copyfile(args.runs / "evaluator" / name, folder / "evaluator" / name)
        heldout = (args.runs / "corpus" / "heldout.txt").read_text()[:HELDOUT_CHARACTERS]
        (folder / "heldout.txt").write_text(heldout)

        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        folder.chmod(0o755)
        total = folder_size(folder)
        if total > LIMIT_BYTES:
            raise SystemExit(f"error: the bundle is {total / 2**20:.1f} MiB, over the 32 MiB limit")
    sizes = {name: folder_size(args.output / name) / 2**20 for name in ("mdlm", "cofre", "evaluator")}
    print(json.dumps({"total_mib": folder_size(args.output) / 2**20, **{f"{name}_mib": round(size, 2) for name, size in sizes.items()}}, indent=2))


if __name__ == "__main__":
    main()
