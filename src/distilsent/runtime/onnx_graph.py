"""The ONNX runtime graph of a checkpoint: built straight from the weights, optionally int8, cached.

The graph is written with ``onnx.helper`` from the checkpoint's tensors (no torch), using ONNX Runtime's
fused CPU operators, so the ONNX backend needs neither torch nor an exporter:

    input_ids, attention_mask (B, T) int64
      -> EmbedLayerNormalization (word + position lookup, LayerNorm; also the per-row length)
      -> n_layers x [ Attention (one QKV GEMM, lengths as the mask)
                      -> MatMul out_lin -> SkipLayerNormalization (+bias, +residual, LayerNorm)
                      -> MatMul lin1 -> BiasGelu (erf, exact) -> MatMul lin2 -> SkipLayerNormalization ]
      -> first token -> pre_classifier, ReLU -> classifier -> logits (B, labels) float32

Padding must be on the right (the tokenizer pads that way): the Attention mask is the count of real
tokens per row.

The int8 graph (``distilsent export --int8``) is written here too, from the same weights. Its four products
per layer (qkv, out_lin, lin1, lin2) multiply int8 activations by int8 weights into exact int32 sums
(MatMulIntegerToFloat), which are scaled back to float32 by the activation's and the weight's scales:

- weights: symmetric per output column, within [-64, 64] (7 bits, below), scaled at export;
- activations: symmetric per token, quantized at run time: each token's scale is the largest |value| of its
  own row / 127 (ReduceMax, ReduceMin, QuantizeLinear per row), stored as uint8 around 128.

So a token's int8 values depend on that token alone, and a text's scores are the same alone, in any batch,
beside any padding, in any order: the integer sums are exact and every float step is per row. (ONNX
Runtime's own dynamic quantization, used before, takes one scale over the whole batch tensor, padding
included: on SST-2 dev 12 of 872 labels of the default model changed between batch_size=1 and the default
batches.) The fused Attention op takes only per-batch scales, so the int8 graph splits the projection from
the attention (MultiHeadAttention, float32). The embedding tables, the LayerNorms, the attention itself and
the two-layer head stay float32: a lookup costs no arithmetic and the rest is a small share of the work.

Measured on SST-2 dev with the default model (AMD EPYC; avx2, avx512f/bw/vl, avx512_vnni, avx512_bf16;
``python benchmarks/speed.py --compare old=DIR new=DIR fp32=DIR``): accuracy 90.83% as float32 (per batch
before: 90.60%), label agreement with float32 99.31% (before: 99.08%), largest logit difference 0.29
(before: 0.55). The per-token scales cost some speed, as a ratio to the per-batch graph in the same
process (this CPU was shared): 0.90 on SST-2 dev and 0.82 for one short text with 1 thread (CPU time), 0.88
and 0.83 with 2 (wall time); float32 runs at 0.45-0.54 on SST-2 dev. Their cost: a max and a min over each
token's row before every product, and many small nodes, which one short text feels most. The graph runs on
onnxruntime 1.17 (checked on SST-2 dev: no label changes between batch sizes there either).

Why 7-bit weights: ONNX Runtime picks its u8 x s8 kernel by CPU. With AVX-512 VNNI (or AVX-VNNI),
``vpdpbusd`` adds the products straight into int32. Without VNNI (AVX2, and AVX-512 without VNNI) it uses
``vpmaddubsw``, which adds two u8 x s8 products into a *saturating* int16: 255 x 127 x 2 = 64,770 overflows
32,767 and the logits go wrong. With weights within [-64, 64] a pair is at most 255 x 64 x 2 = 32,640, so
both kernels compute the same exact integers and the int8 model answers the same on every x86-64 CPU.
Measured with ONNX Runtime's per-batch quantization (the weights are quantized the same way now; details
in the README):

- on an Intel Xeon (avx2, avx512f/bw/vl, avx512_vnni, avx_vnni), the default model on SST-2 dev: label
  agreement with float32 98.74% (8-bit weights) -> 99.08% (7-bit), accuracy 90.25% -> 90.60% (float32:
  90.83%); no loss from the lost bit;
- on the AVX2 path without VNNI (the same machine under ``qemu-x86_64 -cpu Haswell``, which hides
  AVX-512 and VNNI from ONNX Runtime's CPU detection), the test suite's tiny random model: 8-bit weights
  move the logits by up to 1.13 (31% of float32's largest logit) and flip a label; 7-bit weights by 0.20
  (6%), bit for bit what the VNNI kernel gives. The per-token graph moves them by 0.18, within 2e-6 of the
  VNNI result, and gives the same logits alone and batched there too.

ONNX Runtime has no switch to pick a kernel: it reads the CPU's flags, which is why the emulator is used
(``tests/test_onnx.py`` runs the int8 graph under it when ``qemu-x86_64`` is installed, alone and batched).
Weights as uint8 (u8 x u8 kernels) would not saturate either, but ran at float32's speed (351 texts/s on
SST-2 dev, against 670 for int8 weights, 7-bit or 8-bit alike, and 352 for float32).

A checkpoint without ``model.onnx`` gets its graph built once and cached under ``$DISTILSENT_CACHE`` (default
``~/.cache/distilsent``) in ``onnx/<sha256 of config and weights>/model.onnx``; :mod:`distilsent.runtime.cache` lists
and clears it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import CheckpointError, MissingDependencyError
from ..model.checkpoint import (
    CONFIG_NAME,
    IGNORED_SUFFIXES,
    PICKLE_NAME,
    SAFETENSORS_NAME,
    check_state_dict,
    files_digest,
    load_state_dict,
)
from ..model.config import DistilBertConfig
from ..model.directory import ONNX_NAME

SOURCE_NAME = "source.txt"  # beside a cached graph: the checkpoint it was built from, for `distilsent cache list`
# Bump when the graph layout changes, so that stale cached graphs are rebuilt rather than reused.
GRAPH_VERSION = "1"
OPSET = 17
LAYER_NORM_EPS = 1e-12
WEIGHT_MAX = 64  # int8 weights within [-64, 64]: 7 bits, see the module docstring
ROW_MAX = 127.0  # int8 activations: symmetric per token, within [-127, 127] ...
ROW_ZERO_POINT = 128  # ... stored as uint8 around 128, for the u8 x s8 kernels


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "building an ONNX graph needs the onnx package: pip install onnx"
        ) from None
    return onnx


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILSENT_CACHE") or Path.home() / ".cache" / "distilsent")


def expected_shapes(config: DistilBertConfig) -> dict[str, SimpleNamespace]:
    """Name -> object with ``.shape`` for every tensor of the checkpoint, as ``check_state_dict`` wants."""
    d, f, v = config.dim, config.hidden_dim, config.vocab_size
    shapes = {
        "distilbert.embeddings.word_embeddings.weight": (v, d),
        "distilbert.embeddings.position_embeddings.weight": (config.max_position_embeddings, d),
        "distilbert.embeddings.LayerNorm.weight": (d,),
        "distilbert.embeddings.LayerNorm.bias": (d,),
        "pre_classifier.weight": (d, d),
        "pre_classifier.bias": (d,),
        "classifier.weight": (config.num_labels, d),
        "classifier.bias": (config.num_labels,),
    }
    for i in range(config.n_layers):
        p = f"distilbert.transformer.layer.{i}."
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            shapes[f"{p}attention.{lin}.weight"] = (d, d)
            shapes[f"{p}attention.{lin}.bias"] = (d,)
        for norm in ("sa_layer_norm", "output_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes[f"{p}ffn.lin1.weight"] = (f, d)
        shapes[f"{p}ffn.lin1.bias"] = (f,)
        shapes[f"{p}ffn.lin2.weight"] = (d, f)
        shapes[f"{p}ffn.lin2.bias"] = (d,)
    return {name: SimpleNamespace(shape=shape) for name, shape in shapes.items()}


def read_tensors(directory: Path, config: DistilBertConfig) -> dict[str, np.ndarray]:
    """float32 numpy tensors of a checkpoint, checked strictly against its config.

    safetensors are read with numpy alone; a ``pytorch_model.bin`` goes through torch's weights-only loader.
    """
    path = directory / SAFETENSORS_NAME
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, TypeError) as e:  # bfloat16 has no numpy dtype
            raise CheckpointError(f"{path} cannot be read as float16/float32 safetensors ({e})") from None
        tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    else:
        try:
            import torch  # noqa: F401  (load_state_dict reads the pickle through torch.load)
        except ImportError:
            raise MissingDependencyError(
                f"{directory} has only {PICKLE_NAME}, which needs PyTorch to read: pip install 'distilsent[torch]'"
            ) from None
        tensors = {k: v.float().numpy() for k, v in load_state_dict(directory).items()}
    check_state_dict(expected_shapes(config), tensors, str(directory))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight (in, out) as int8 within [-64, 64] (7 bits, see the module docstring) and a scale per output column."""
    scale = np.abs(w).max(axis=0) / WEIGHT_MAX
    scale = np.where(scale > 0, scale, 1)  # an all-zero column is zeros at any scale
    return np.round(w / scale).astype(np.int8), scale.astype(np.float32)


class GraphParts:
    """The nodes and initializers of a graph being built, and its products: float32, or int8 (module docstring)."""

    def __init__(self, int8: bool):
        self.int8 = int8
        self.initializers = []
        self.nodes = []
        self.quantized = {}  # float tensor -> its int8 rows and their scales, made once for every product reading it

    def weight(self, name: str, array: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], microsoft: bool = False, **attrs) -> None:
        from onnx import helper

        domain = "com.microsoft" if microsoft else ""
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))

    def token_rows(self, x: str) -> tuple[str, str]:
        """x (B, T, width) as uint8 rows (B*T, width), one symmetric scale per token: max |x| / 127 over its row."""
        if x not in self.quantized:
            node, rows = self.node, f"{x}_rows"
            node("Flatten", [x], [rows], axis=-1)
            # max |x| as max(max, -min): two reads of x, cheaper than writing |x| out first
            node("ReduceMax", [rows], [f"{rows}_max"], axes=[1], keepdims=0)
            node("ReduceMin", [rows], [f"{rows}_min"], axes=[1], keepdims=0)
            node("Neg", [f"{rows}_min"], [f"{rows}_neg_min"])
            node("Max", [f"{rows}_max", f"{rows}_neg_min"], [f"{rows}_abs_max"])
            # A row of zeros gets scale 0: whatever it quantizes to, the product multiplies it by 0.
            node("Div", [f"{rows}_abs_max", "row_range"], [f"{rows}_scale"])
            node("QuantizeLinear", [rows, f"{rows}_scale", "row_zero_points"], [f"{rows}_quantized"], axis=0)
            node("Unsqueeze", [f"{rows}_scale", "second_axis"], [f"{rows}_scale_column"])  # (B*T, 1)
            self.quantized[x] = f"{rows}_quantized", f"{rows}_scale_column"
        return self.quantized[x]

    def linear(self, x: str, name: str, w: np.ndarray, out: str) -> None:
        """out = x @ w, w as (in, out): a float32 MatMul, or in the int8 graph an exact integer product of x's
        int8 rows and w's int8 columns, scaled back by the row's and the column's scale."""
        if not self.int8:
            self.node("MatMul", [x, self.weight(name, w)], [out])
            return
        rows, row_scales = self.token_rows(x)
        w_int8, column_scales = int8_columns(w)
        self.node("MatMulIntegerToFloat",
                  [rows, self.weight(f"{name}_quantized", w_int8, np.int8), row_scales,
                   self.weight(f"{name}_scale", column_scales), "zero_point"],
                  [f"{out}_rows"], microsoft=True)
        # Back to (B, T, width) for the fused ops: under onnxruntime 1.17, 2-D rows into SkipLayerNormalization
        # overwrote other tensors.
        self.node("Reshape", [f"{out}_rows", "token_shape"], [out])


def add_embeddings(g: GraphParts, t: dict[str, np.ndarray]) -> str:
    """input_ids, attention_mask -> hidden_0 (B, T, D) and lengths (B,); the int8 graph's shared constants."""
    from onnx import TensorProto, numpy_helper

    e = "distilbert.embeddings."
    # The fused ops take int32 ids and mask; the graph keeps the int64 interface of Hugging Face exports.
    g.node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32)
    g.node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32)
    g.node(
        "EmbedLayerNormalization",
        ["ids32", "", g.weight("word_embeddings", t[e + "word_embeddings.weight"]),
         g.weight("position_embeddings", t[e + "position_embeddings.weight"]), "",
         g.weight("embeddings_ln_gamma", t[e + "LayerNorm.weight"]),
         g.weight("embeddings_ln_beta", t[e + "LayerNorm.bias"]), "mask32"],
        ["hidden_0", "lengths"],  # lengths: real tokens per row, the Attention mask for right padding
        microsoft=True,
        epsilon=LAYER_NORM_EPS,
    )
    if g.int8:
        # Shapes and constants of every quantized product. A row is one token; uint8 rows around 128 keep
        # ONNX Runtime's u8 x s8 kernels (see the module docstring).
        g.node("Shape", ["hidden_0"], ["batch_sequence"], end=2)
        g.node("Concat", ["batch_sequence", g.weight("any_width", np.array([-1]), np.int64)], ["token_shape"], axis=0)
        g.node("ReduceProd", ["batch_sequence"], ["token_count"], keepdims=1)
        g.node("ConstantOfShape", ["token_count"], ["row_zero_points"],
               value=numpy_helper.from_array(np.array([ROW_ZERO_POINT], dtype=np.uint8)))
        g.weight("zero_point", np.array(ROW_ZERO_POINT), np.uint8)
        g.weight("row_range", np.array(ROW_MAX))
        g.weight("second_axis", np.array([1]), np.int64)
    return "hidden_0"


def add_block(g: GraphParts, config: DistilBertConfig, t: dict[str, np.ndarray], i: int, x: str) -> str:
    """Transformer block ``i`` on hidden state ``x``: attention, then the feed-forward network; returns
    ``hidden_{i + 1}``."""
    node, weight = g.node, g.weight
    p = f"distilbert.transformer.layer.{i}."
    a = p + "attention."
    # torch Linear stores (out, in); MatMul wants (in, out), and the three projections side by side.
    qkv = np.concatenate([t[a + f"{n}.weight"].T for n in ("q_lin", "k_lin", "v_lin")], axis=1)  # (D, 3D)
    qkv_bias = np.concatenate([t[a + f"{n}.bias"] for n in ("q_lin", "k_lin", "v_lin")])  # (3D,)
    if g.int8:
        # The fused Attention op would quantize its input with one scale for the whole batch: here the
        # projection is an int8 product like the others, and the attention itself float32.
        g.linear(x, f"l{i}.qkv", qkv, f"l{i}.qkv")
        node("Split", [f"l{i}.qkv"], [f"l{i}.q", f"l{i}.k", f"l{i}.v"], axis=2)
        node("MultiHeadAttention", [f"l{i}.q", f"l{i}.k", f"l{i}.v", weight(f"l{i}.qkv_bias", qkv_bias), "lengths"],
             [f"l{i}.context"], microsoft=True, num_heads=config.n_heads)
    else:
        node("Attention", [x, weight(f"l{i}.qkv", qkv), weight(f"l{i}.qkv_bias", qkv_bias), "lengths"],
             [f"l{i}.context"], microsoft=True, num_heads=config.n_heads)
    g.linear(f"l{i}.context", f"l{i}.out", t[a + "out_lin.weight"].T, f"l{i}.attn_out")
    node("SkipLayerNormalization",
         [f"l{i}.attn_out", x, weight(f"l{i}.sa_ln_gamma", t[p + "sa_layer_norm.weight"]),
          weight(f"l{i}.sa_ln_beta", t[p + "sa_layer_norm.bias"]), weight(f"l{i}.out_bias", t[a + "out_lin.bias"])],
         [f"l{i}.sa"], microsoft=True, epsilon=LAYER_NORM_EPS)
    g.linear(f"l{i}.sa", f"l{i}.lin1", t[p + "ffn.lin1.weight"].T, f"l{i}.ffn_in")
    if config.activation == "gelu":
        node("BiasGelu", [f"l{i}.ffn_in", weight(f"l{i}.lin1_bias", t[p + "ffn.lin1.bias"])], [f"l{i}.act"],
             microsoft=True)
    else:
        node("Add", [f"l{i}.ffn_in", weight(f"l{i}.lin1_bias", t[p + "ffn.lin1.bias"])], [f"l{i}.ffn_biased"])
        node("Relu", [f"l{i}.ffn_biased"], [f"l{i}.act"])
    g.linear(f"l{i}.act", f"l{i}.lin2", t[p + "ffn.lin2.weight"].T, f"l{i}.ffn_out")
    node("SkipLayerNormalization",
         [f"l{i}.ffn_out", f"l{i}.sa", weight(f"l{i}.out_ln_gamma", t[p + "output_layer_norm.weight"]),
          weight(f"l{i}.out_ln_beta", t[p + "output_layer_norm.bias"]),
          weight(f"l{i}.lin2_bias", t[p + "ffn.lin2.bias"])],
         [f"hidden_{i + 1}"], microsoft=True, epsilon=LAYER_NORM_EPS)
    return f"hidden_{i + 1}"


def add_head(g: GraphParts, t: dict[str, np.ndarray], x: str) -> None:
    """The first token of ``x`` -> pre_classifier, ReLU -> classifier -> logits (B, labels)."""
    from onnx import numpy_helper

    node, weight = g.node, g.weight
    # A 0-d index, so that Gather drops the axis (weight() would store it with shape (1,)).
    g.initializers.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "first"))
    node("Gather", [x, "first"], ["cls"], axis=1)  # (B, D)
    # The head stays float32 in the int8 graph too: two small products on one token, where int8 would only
    # cost accuracy.
    node("MatMul", ["cls", weight("pre_classifier", t["pre_classifier.weight"].T)], ["pre_matmul"])
    node("Add", ["pre_matmul", weight("pre_classifier_bias", t["pre_classifier.bias"])], ["pre"])
    node("Relu", ["pre"], ["pre_act"])
    node("MatMul", ["pre_act", weight("classifier", t["classifier.weight"].T)], ["logits_matmul"])
    node("Add", ["logits_matmul", weight("classifier_bias", t["classifier.bias"])], ["logits"])


def build_graph(config: DistilBertConfig, tensors: dict[str, np.ndarray], int8: bool = False):
    """The fused ``onnx.ModelProto`` of a DistilBERT classifier, float32 or int8 (see the module docstring)."""
    require_onnx()
    from onnx import TensorProto, helper

    g = GraphParts(int8)
    x = add_embeddings(g, tensors)
    for i in range(config.n_layers):
        x = add_block(g, config, tensors, i, x)
    add_head(g, tensors, x)
    graph = helper.make_graph(
        g.nodes,
        "distilsent",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", config.num_labels])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="distilsent",
    )
    model.ir_version = 8  # what every onnxruntime >= 1.14 reads
    return model


def hidden_state_name(layer: int) -> str:
    """The graph's name for hidden state ``layer``: 0 is the embedding LayerNorm, i the output of block i."""
    return f"hidden_{layer}"


def with_hidden_states(path: Path):
    """The graph at ``path`` (float32 or int8, as built here) with every hidden state as an extra output.

    The classification graph keeps only ``logits`` as its output, so ONNX Runtime is free to reuse the
    hidden states' buffers; embeddings get this second graph instead of slowing classification down.
    """
    onnx = require_onnx()
    from onnx import TensorProto, helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError and friends: a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable ONNX model ({e})") from None
    produced = {name for node in model.graph.node for name in node.output}
    names = []
    while hidden_state_name(len(names)) in produced:
        names.append(hidden_state_name(len(names)))
    if not names:
        raise CheckpointError(
            f"{path} has no tensor named {hidden_state_name(0)}: hidden states need a graph written by "
            "distilsent (distilsent export), or the torch backend"
        )
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", "dim"])
        for name in names if name not in outputs
    )
    return model


def write_onnx(directory: Path, config: DistilBertConfig, target: Path, int8: bool = False) -> Path:
    """Build the graph of a checkpoint directory into ``target`` (optionally int8), atomically."""
    onnx = require_onnx()
    model = build_graph(config, read_tensors(directory, config), int8=int8)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        written = Path(scratch) / ONNX_NAME
        onnx.save_model(model, written)
        os.replace(written, target)  # readers never see a half-written graph
    return target


def weights_digest(directory: Path) -> str:
    return files_digest(directory, (CONFIG_NAME, SAFETENSORS_NAME, PICKLE_NAME), salt=GRAPH_VERSION)


def onnx_path(directory: Path, config: DistilBertConfig) -> Path:
    """The ONNX graph of a checkpoint: its own ``model.onnx``, else the cached build (made on first use)."""
    own = directory / ONNX_NAME
    if own.is_file():
        return own
    cached = cache_dir() / "onnx" / weights_digest(directory) / ONNX_NAME
    if not cached.is_file():
        try:
            write_onnx(directory, config, cached)
            (cached.parent / SOURCE_NAME).write_text(str(directory.resolve()) + "\n", encoding="utf-8")
        except OSError as e:
            raise CheckpointError(
                f"cannot write the ONNX graph cache at {cached.parent} ({e.strerror or e}); "
                "set DISTILSENT_CACHE to a writable directory"
            ) from None
    return cached
