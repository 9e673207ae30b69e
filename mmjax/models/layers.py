"""Shared building blocks: attention, MLP, pre-LN transformer, embeddings, pooling.

Every parameter carries logical axis names (`mmjax.models.axes`). Shapes use
B = batch, T = query length, S = key length, D = width, H = heads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mmjax.models import axes

Dtype = jnp.dtype


def _gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, `x Φ(x)`, written with `erf`: XLA:CPU lowers `jax.nn.gelu`'s `erfc` to a two-branch
    polynomial, ~3× slower than `erf`'s (measured on `[4160, 768]` float32); the values agree to 5e-7."""
    return x * (0.5 + 0.5 * jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}

# Dense layers name their outputs so that the "dots" policies keep them: on CPU a low-precision dense multiplies
# inside a custom VJP (`accumulating_dense`), where the policies' test for `dot_general` cannot see it.
DENSE_OUTPUT = "dense_output"
_save_dense_outputs = jax.checkpoint_policies.save_only_these_names(DENSE_OUTPUT)
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(jax.checkpoint_policies.checkpoint_dots,
                                                            _save_dense_outputs),
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims, _save_dense_outputs),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def accumulating_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Dtype) -> jax.Array:
    """`x [N, K] @ kernel [*in, *out] + bias [*out]` computed in `dtype` with float32 sums: `[N, M]` in `dtype`,
    where `K = prod(in)` and `M = prod(out)`.

    Every matmul, the forward one and both of the backward pass, takes `dtype` operands and sums in
    float32 (`preferred_element_type`); the bias is added, and its gradient summed, in float32; the
    parameters' gradients leave in their own dtype from the float32 sums, never rounded to `dtype`.
    Written for XLA:CPU, where JAX's own `jnp.dot(x, kernel)` in bf16 is slow: a bf16 result makes XLA
    convert both operands and multiply in float32 (`[4160, 192] @ [192, 768]`: 3.1 ms, vs 1.6 ms with a
    float32 result and 2.7 ms all in float32), and a bias gradient summed in bf16 becomes float32
    `reduce-window`s (150 ms of a 400 ms bench-tiny step). XLA:CPU still multiplies the kernel's gradient
    (a contraction over N) in float32. The kernel and bias are reshaped inside, so that under `nn.scan`
    the saved residuals are the layer's own parameters and not stacked copies of them. Being a `custom_vjp`,
    it has no forward-mode derivative: `jax.jvp` / `jacfwd` of a bf16 model on CPU raise (reverse mode, and
    float32 or other backends, are not affected).
    """
    y = jnp.dot(x.astype(dtype), kernel.reshape(x.shape[-1], -1).astype(dtype), preferred_element_type=jnp.float32)
    return (y if bias is None else y + bias.reshape(-1).astype(jnp.float32)).astype(dtype)


def _accumulating_dense_forward(x, kernel, bias, dtype):
    return accumulating_dense(x, kernel, bias, dtype), (x, kernel, bias)


def _accumulating_dense_backward(dtype, residuals, grad):
    x, kernel, bias = residuals
    kernel2d = kernel.reshape(x.shape[-1], -1).astype(dtype)
    # `grad [N, M]` against `kernel [K, M]` on their last dims: XLA:CPU runs this form on its bf16 kernels, while
    # `grad @ kernel.T` gets a transposed copy that it converts to float32 (1.3 vs 3.1 ms at bench-tiny's sizes).
    grad_x = jax.lax.dot_general(grad.astype(dtype), kernel2d, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)
    grad_kernel = jnp.dot(x.astype(dtype).T, grad.astype(dtype), preferred_element_type=jnp.float32)
    grad_bias = (None if bias is None
                 else jnp.sum(grad.astype(jnp.float32), axis=0).reshape(bias.shape).astype(bias.dtype))
    return grad_x.astype(x.dtype), grad_kernel.reshape(kernel.shape).astype(kernel.dtype), grad_bias


accumulating_dense.defvjp(_accumulating_dense_forward, _accumulating_dense_backward)


def _init(initializer: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(initializer, names)


class DenseGeneral(nn.Module):
    """`x [..., *in_dims] -> [..., *features]`: contracts the last `num_in` dims of x
    with a kernel `[*in_dims, *features]` whose axes are named `names`.

    Initialised as LeCun-normal over the flattened fan-in (like a Dense layer on
    the flattened dims); the bias, if any, has the axes of `features`.
    """

    features: tuple[int, ...]
    names: tuple[str | None, ...]
    num_in: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n_out = len(self.features)
        init = nn.initializers.lecun_normal(in_axis=tuple(range(self.num_in)),
                                            out_axis=tuple(range(self.num_in, self.num_in + n_out)))
        kernel = self.param("kernel", _init(init, self.names), tuple(x.shape[-self.num_in:]) + self.features)
        bias = (self.param("bias", _init(nn.initializers.zeros_init(), self.names[-n_out:]), self.features)
                if self.use_bias else None)
        # One 2-D matmul `[tokens, fan-in] @ [fan-in, fan-out]`, so the kernel's gradient is a 2-D matmul too.
        # A `tensordot` over `[B, T, D]` makes it contract two dims, which XLA:CPU lays out with transposed copies
        # and a slower kernel (bench-tiny train step, batch 64, 2 threads: 322 → 293 ms, medians of 4 A/B runs).
        fan_in = math.prod(kernel.shape[:self.num_in])
        x2d, dtype = x.reshape(-1, fan_in), jnp.dtype(self.dtype)
        if dtype != jnp.float32 and jax.default_backend() == "cpu":
            y = accumulating_dense(x2d, kernel, bias, dtype)
        else:  # GPUs and TPUs multiply bf16 natively and keep the bf16 partial sums that cross devices half the size
            y = jnp.dot(x2d.astype(dtype), kernel.reshape(fan_in, -1).astype(dtype))
            y = y if bias is None else y + bias.reshape(-1).astype(dtype)
        return checkpoint_name(y, DENSE_OUTPUT).reshape(x.shape[:-self.num_in] + self.features)


def dense(features: int | tuple[int, ...], names: tuple[str | None, ...], *, num_in: int = 1, use_bias: bool = True,
          dtype: Dtype = jnp.float32, name: str | None = None) -> DenseGeneral:
    """A `DenseGeneral` with integer or tuple `features`."""
    features = features if isinstance(features, tuple) else (features,)
    return DenseGeneral(features, names, num_in, use_bias, dtype, name=name)


def layer_norm(eps: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, name=name,
        scale_init=_init(nn.initializers.ones_init(), (axes.NORM,)),
        bias_init=_init(nn.initializers.zeros_init(), (axes.NORM,)),
    )


def constrain_tokens(x: jax.Array) -> jax.Array:
    """Annotate a `[B, T, D]` activation with its logical axes."""
    return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, implementation: str,
                     multiple: int, kv_length: int | None = None, kv_lengths: jax.Array | None = None,
                     mask: jax.Array | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention` of `q [B, T, N, H]` against `k, v [B, S, N, H]` → `[B, T, N, H]`, with `T`
    and `S` padded up to a multiple of `multiple`, the padded keys masked out (as sequence lengths) and the padded
    queries cut off. `kv_length`: the keys from this index on are padding already (a `Transformer` pads its
    sequence once for all its layers); masked the same way. `kv_lengths` int `[B]`: each example's keys from its
    own index on are padding too (a caption's tokens after its end); each must be ≥ 1. `mask` bool `[B, T, S]`:
    query `t` sees key `s` only where True (a query that sees no key gets a finite but meaningless output,
    which the caller must discard).

    For cuDNN's fused attention, which JAX refuses in training at odd lengths (ViT-B/16's 197 tokens, CLIP's
    77): its check for a bias wants even lengths, and JAX passes a zero-size placeholder for an absent bias
    (`jax/_src/cudnn/fused_attention_stablehlo.py`), so the check applies to every training call. Causal
    self-attention (`T == S`) needs no mask for keys at its end: only the padded queries after them see them.
    """
    t, s = q.shape[1], k.shape[1]
    valid = s if kv_length is None else kv_length
    pad = lambda x, length: jnp.pad(x, ((0, 0), (0, -length % multiple), (0, 0), (0, 0)))  # noqa: E731
    q, k, v = pad(q, t), pad(k, s), pad(v, s)
    masked = valid < k.shape[1] and not (causal and t == s)
    lengths = jnp.full((q.shape[0],), valid, jnp.int32) if masked or kv_lengths is not None else None
    if kv_lengths is not None:
        lengths = jnp.minimum(lengths, jnp.asarray(kv_lengths, jnp.int32))
    if mask is not None:
        if jnp.shape(mask) != (q.shape[0], t, s):
            raise ValueError(f"attention mask must be bool [B, T, S] = {[q.shape[0], t, s]}, got {list(jnp.shape(mask))}")
        mask = jnp.pad(mask, ((0, 0), (0, q.shape[1] - t), (0, k.shape[1] - s)))[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out[:, :t]


@flax.struct.dataclass
class DecodeStep:
    """A step of autoregressive decoding with a key-value cache: the T queries are the tokens at positions
    `index … index + T − 1` (`index` an int32 scalar, traced; T = 1 for one token, more to fill the cache with a
    prompt in one pass) of a sequence of at most `length` tokens (static: a pytree field that `nn.remat` and
    `jit` keep out of the traced leaves)."""

    index: jax.Array
    length: int = flax.struct.field(pytree_node=False)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention, self or cross.

    Call with `queries [B, T, D]`, optional `keys_values [B, S, Dkv]` (self-attention
    when omitted), optional `kv_lengths` int `[B]` (each example's keys from that index on are padding,
    masked out) and optional `mask` bool `[B, T, S]` (query `t` sees key `s` only where True). Returns
    `[B, T, D]`. `causal`: query `t` attends to keys `≤ t` only.
    `implementation`: `jax.nn.dot_product_attention`'s, `"xla"` or `"cudnn"` (NVIDIA GPUs,
    bfloat16 or float16: cuDNN's fused flash attention). `kv_length`: keys and values from this index on are
    padding, masked out.

    `decode` (`DecodeStep`, causal self-attention only): `queries [B, T, D]` are the tokens at `decode.index …
    decode.index + T − 1`; their keys and values are written there into the `cache` collection (`cached_key`,
    `cached_value`: `[B, decode.length, H, D/H]`, zeros when absent; apply with `mutable=["cache"]`), and the
    token at position p attends to the cached positions `≤ p` on XLA's attention.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    causal: bool = False
    implementation: str = "xla"
    kv_length: int | None = None

    @nn.compact
    def __call__(self, queries, keys_values=None, kv_lengths=None, mask=None, decode: DecodeStep | None = None):
        if decode is not None and (keys_values is not None or not self.causal or queries.shape[1] > decode.length):
            raise ValueError(f"decoding is causal self-attention of at most {decode.length} tokens [B, T, D], got "
                             f"queries {list(queries.shape)}" + (" and keys" if keys_values is not None else ""))
        if keys_values is None:
            keys_values = queries
        width = queries.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        if self.implementation == "cudnn" and jax.default_backend() != "gpu":
            raise ValueError(f"attention 'cudnn' runs on NVIDIA GPUs only; this process's backend is "
                             f"{jax.default_backend()} (use attention 'xla')")
        head_dim = width // self.num_heads
        proj_names = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        project = lambda name, x: dense((self.num_heads, head_dim), proj_names, dtype=self.dtype, name=name)(x)
        q, k, v = project("query", queries), project("key", keys_values), project("value", keys_values)
        if decode is not None:
            out = self._attend_to_cache(q, k, v, decode)
        else:
            out = padded_attention(q, k, v, causal=self.causal, implementation=self.implementation,
                                   multiple=LENGTH_MULTIPLES[self.implementation], kv_length=self.kv_length,
                                   kv_lengths=kv_lengths, mask=mask)
        return dense(width, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), num_in=2, dtype=self.dtype, name="out")(out)

    def _attend_to_cache(self, q, k, v, decode: DecodeStep):
        """`q, k, v [B, T, H, D/H]` of the tokens at `decode.index …` → their attention over the cache,
        `[B, T, H, D/H]`."""
        shape = (k.shape[0], decode.length) + k.shape[2:]
        keys, values = (self.variable("cache", name, jnp.zeros, shape, k.dtype)
                        for name in ("cached_key", "cached_value"))
        keys.value = jax.lax.dynamic_update_slice_in_dim(keys.value, k, decode.index, axis=1)
        values.value = jax.lax.dynamic_update_slice_in_dim(values.value, v, decode.index, axis=1)
        positions = decode.index + jnp.arange(q.shape[1])
        seen = jnp.broadcast_to(jnp.arange(decode.length)[None] <= positions[:, None],
                                (q.shape[0], q.shape[1], decode.length))
        return padded_attention(q, keys.value, values.value, causal=False, implementation="xla", multiple=1,
                                mask=seen)


class Mlp(nn.Module):
    """Feed-forward block `[.., D] -> [.., mlp_dim] -> [.., D]`."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = dense(self.mlp_dim, (axes.EMBED, axes.MLP), dtype=self.dtype, name="fc1")(x)
        h = ACTIVATIONS[self.activation](h)
        return dense(width, (axes.MLP, axes.EMBED), dtype=self.dtype, name="fc2")(h)


# Compute dtypes a model runs in (its parameters stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# `jax.nn.dot_product_attention` implementations a transformer's self-attention may use.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
# The sequence-length multiple each implementation computes at: shorter ones are padded and the padding masked.
LENGTH_MULTIPLES = {"xla": 1, "cudnn": 2}


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """How blocks compute, shared by every tower of a model.

    activation: a key of `ACTIVATIONS`; scan_layers: `nn.scan` over layers (stacked
    parameters, one compiled block); remat_policy: a key of `REMAT_POLICIES`;
    dtype: compute dtype (parameters stay float32); attention: the self-attention's
    implementation, `"xla"` (any backend) or `"cudnn"` (NVIDIA GPUs, bfloat16 or float16).
    """

    activation: str = "gelu"
    norm_eps: float = 1e-5
    scan_layers: bool = False
    remat_policy: str = "none"
    dtype: str = "float32"
    attention: str = "xla"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {list(COMPUTE_DTYPES)}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"scan_layers {self.scan_layers!r} is not a bool")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention {self.attention!r} is not one of {list(ATTENTION_IMPLEMENTATIONS)}")
        if self.attention == "cudnn" and self.dtype == "float32":
            raise ValueError("attention 'cudnn' computes in bfloat16 or float16, not dtype 'float32'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerSpec:
    """Shape of a transformer stack; a ValueError at construction when a size (here or in a subclass) is not
    an int or the heads do not split the width."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"{type(self).__name__}: {field.name} {value!r} is not an int")
        if min(self.width, self.num_heads) < 1 or self.width % self.num_heads:
            raise ValueError(f"{type(self).__name__}: width {self.width} does not split into {self.num_heads} heads")
        if self.depth < 0 or self.mlp_dim < 1:
            raise ValueError(f"{type(self).__name__}: depth {self.depth} must be ≥ 0 and mlp_dim {self.mlp_dim} ≥ 1")


class TransformerBlock(nn.Module):
    """Pre-LN block: `x + attn(ln(x))`, then `x + mlp(ln(x))`. `[B, T, D] -> [B, T, D]`; `causal` self-attention
    lets token `t` see tokens `≤ t` only; tokens from `valid_length` on are padding no other token sees, and so are
    each example's tokens from its `lengths [B]` on, when given. `decode`: T tokens of causal decoding with a
    key-value cache (`MultiHeadAttention`)."""

    spec: TransformerSpec
    options: BlockOptions
    causal: bool = False
    valid_length: int | None = None

    @nn.compact
    def __call__(self, x, lengths=None, decode: DecodeStep | None = None):
        spec, opts = self.spec, self.options
        dtype = jnp.dtype(opts.dtype)
        x = constrain_tokens(x)
        y = layer_norm(opts.norm_eps, dtype, "ln_1")(x)
        x = x + MultiHeadAttention(spec.num_heads, dtype, self.causal, opts.attention, self.valid_length,
                                   name="attn")(y, kv_lengths=lengths, decode=decode)
        y = layer_norm(opts.norm_eps, dtype, "ln_2")(x)
        return x + Mlp(spec.mlp_dim, opts.activation, dtype, name="mlp")(y)


def rematerialised(block: type[nn.Module], options: BlockOptions) -> type[nn.Module]:
    """`block` wrapped in `nn.remat` with `options.remat_policy`, for a stack unrolled in Python (unchanged for
    "none")."""
    if options.remat_policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[options.remat_policy])


class _ScanStep(TransformerBlock):
    """The block in the `(carry, x) -> (carry, y)` form that `nn.scan` needs."""

    def __call__(self, x, lengths):
        return super().__call__(x, lengths), None


class Transformer(nn.Module):
    """A stack of `depth` pre-LN blocks (`causal` or not), unrolled or scanned, optionally rematerialised.

    Scanned parameters are stacked on a leading `layers` axis; the outputs are the
    same either way. `[B, T, D] -> [B, T, D]`; `lengths` int `[B]` (optional): each example's tokens from that
    index on are padding that no token attends to. A length the attention cannot take (cuDNN's: odd) is padded
    once here, for all the blocks, and cut off at the end; attention masks the padding out.
    """

    spec: TransformerSpec
    options: BlockOptions
    causal: bool = False

    @nn.compact
    def __call__(self, x, lengths=None):
        spec, opts = self.spec, self.options
        length = x.shape[1]
        padding = -length % LENGTH_MULTIPLES[opts.attention]
        x = jnp.pad(x, ((0, 0), (0, padding), (0, 0)))
        valid_length = length if padding else None
        block = _ScanStep if opts.scan_layers else TransformerBlock
        if opts.remat_policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[opts.remat_policy], prevent_cse=not opts.scan_layers)
        if opts.scan_layers:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=nn.broadcast, length=spec.depth,
                metadata_params={nn.PARTITION_NAME: axes.LAYERS},
            )
            x, _ = stack(spec, opts, self.causal, valid_length, name="layers")(x, lengths)
        else:
            for i in range(spec.depth):
                x = block(spec, opts, self.causal, valid_length, name=f"layers_{i}")(x, lengths)
        return x[:, :length]


class PatchEmbed(nn.Module):
    """Non-overlapping patches: `[B, H, W, C] -> [B, (H/p)*(W/p), D]`."""

    patch_size: int
    width: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", use_bias=self.use_bias, dtype=self.dtype,
            kernel_init=_init(nn.initializers.lecun_normal(), (None, None, None, axes.EMBED)),
            bias_init=_init(nn.initializers.zeros_init(), (axes.EMBED,)), name="conv",
        )(images)
        return x.reshape(x.shape[0], x.shape[1] * x.shape[2], self.width)  # not -1: a batch of 0 images is fine


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position table `[grid*grid, width]` (MoCo v3 / big_vision layout)."""
    if width % 4 or width < 8:  # at width 4 the frequency exponent is 0 / 0 (NaN), in big_vision's formula too
        raise ValueError(f"sincos_2d needs a width divisible by 4 and at least 8, got {width}")
    y, x = np.mgrid[:grid, :grid]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = y.reshape(-1, 1) * omega[None]
    x = x.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class AddPositionEmbedding(nn.Module):
    """Adds a position table to `[B, T, D]`: learned (`"learned"`) or fixed 2-D (`"sincos2d"`)."""

    kind: str = "learned"
    init_std: float = 0.01

    @nn.compact
    def __call__(self, x):
        _, length, width = x.shape
        if self.kind == "learned":
            table = self.param("embedding", _init(nn.initializers.normal(self.init_std), (axes.POSITION, axes.EMBED)),
                               (length, width))
        elif self.kind == "sincos2d":
            grid = int(round(length ** 0.5))
            if grid * grid != length:
                raise ValueError(f"sincos2d needs a square token grid, got {length} tokens")
            table = jnp.asarray(sincos_2d(grid, width))
        else:
            raise ValueError(f"position embedding {self.kind!r} is not 'learned' or 'sincos2d'")
        return x + table.astype(x.dtype)[None]


class ClassToken(nn.Module):
    """Prepends a learned token: `[B, T, D] -> [B, T+1, D]`."""

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        cls = self.param("token", _init(nn.initializers.normal(width ** -0.5), (axes.EMBED,)), (width,))
        cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, width))
        return jnp.concatenate([cls, x], axis=1)


class MapHead(nn.Module):
    """Multi-head attention pooling (MAP): a learned probe attends over tokens.

    `[B, T, D] -> [B, D]`: probe → cross-attention → `x + mlp(ln(x))`.
    """

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        width = tokens.shape[-1]
        probe = self.param("probe", _init(nn.initializers.xavier_uniform(), (None, None, axes.EMBED)), (1, 1, width))
        probe = jnp.broadcast_to(probe.astype(tokens.dtype), (tokens.shape[0], 1, width))
        x = MultiHeadAttention(self.num_heads, self.dtype, name="attn")(probe, tokens)
        y = layer_norm(self.norm_eps, self.dtype, "ln")(x)
        x = x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(y)
        return x[:, 0]


def pool_tokens(tokens: jax.Array, kind: str, token_ids: jax.Array | None = None,
                eot_id: int | None = None) -> jax.Array:
    """Parameter-free pooling of `[B, T, D]` to `[B, D]`.

    kind: `"cls"` (first token), `"mean"`, `"last"` (last position), `"eot"` (the
    position of the largest token id, the end-of-text token in OpenAI's vocabulary;
    needs `token_ids [B, T]`), `"first_eot"` (the first position whose id is `eot_id`,
    position 0 when there is none, as transformers' CLIP does).
    """
    if kind == "cls":
        return tokens[:, 0]
    if kind == "mean":
        return tokens.mean(axis=1)
    if kind == "last":
        return tokens[:, -1]
    if kind == "eot":
        index = jnp.argmax(token_ids, axis=-1)
        return jnp.take_along_axis(tokens, index[:, None, None], axis=1)[:, 0]
    if kind == "first_eot":
        if eot_id is None:
            raise ValueError("pooling 'first_eot' needs the end-of-text id (TextConfig.eot_id)")
        index = jnp.argmax(token_ids == eot_id, axis=-1)
        return jnp.take_along_axis(tokens, index[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling {kind!r} is not one of cls, mean, last, eot, first_eot, map")
