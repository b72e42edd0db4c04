"""mv_warp, local_attn and creff on the emulated CUDA device (arseg_ops.testing.cuda_emulated).

Each op validates its arguments as the real one does, sends CPU tensors to the emulator (_cuda_emu.run), and
returns outputs in the memory format the CUDA op returns. Autograd runs the emulated backward kernels, as the CUDA
op's autograd runs the CUDA backward kernels: the same formulas as arseg_ops/_ops.py, on the emulated device.
"""
import torch
import torch.nn.functional as F

from . import _cuda_emu
from ._ops import _align_corners_matrix
from ._validate import check_creff, check_local_attn, check_mv_warp, creff_channels_last, warp_scale

OPS = ("mv_warp", "local_attn", "creff")


def strictly_channels_last(t):
    """The glue's layout test: channels_last and not also NCHW-contiguous (C == 1 or H == W == 1 tensors are both)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def _check_dtype(op, *tensors):
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError("cuda_emulated(%r): expected tensors, got %s" % (op, type(t).__name__))
        if t.dtype not in _cuda_emu.DTYPES:
            raise ValueError("cuda_emulated(%r): the CUDA kernels support float64, float32, float16 and bfloat16, "
                             "got %s" % (op, t.dtype))
        if t.device.type != "cpu":
            raise ValueError("cuda_emulated(%r): takes CPU tensors (the emulator runs on the CPU), got %s"
                             % (op, t.device))


class _Emulated:
    """State of one emulated op: experimental or default kernels, device options, and the kernels last run."""

    def __init__(self, experimental, options):
        self.experimental = experimental
        self.options = options
        self.kernels = []  # names of the kernels the emulator ran, in call order (for tests)

    def run(self, op, *, dtype, nhwc, sizes, inputs, output_shapes):
        outs, kernel = _cuda_emu.run(op, experimental=self.experimental, dtype=dtype, nhwc=nhwc, sizes=sizes,
                                     inputs=inputs, output_shapes=output_shapes, options=self.options)
        self.kernels.append(kernel)
        return outs

    # ---- mv_warp ----

    def mv_warp_sizes(self, feature, mv, sx, sy, mode, padding_mode):
        N, C, H, W = feature.shape
        return dict(N=N, C=C, H=H, W=W, Hb=mv.shape[2], Wb=mv.shape[3], sx=float(sx), sy=float(sy), mode=mode,
                    padding=padding_mode)

    def mv_warp_out_format(self, t):
        # v2 (experimental) keeps a strictly channels_last tensor's layout; v1 returns NCHW (_ops.py, same rule).
        return _format(self.experimental and strictly_channels_last(t))

    def mv_warp_forward(self, feature, mv, sx, sy, mode, padding_mode):
        if feature.numel() == 0:
            return torch.empty_like(feature, memory_format=self.mv_warp_out_format(feature))
        (out,) = self.run("mv_warp_forward", dtype=feature.dtype, nhwc=strictly_channels_last(feature),
                          sizes=self.mv_warp_sizes(feature, mv, sx, sy, mode, padding_mode),
                          inputs=[feature, mv], output_shapes=[feature.shape])
        return out.contiguous(memory_format=self.mv_warp_out_format(feature))

    def mv_warp_backward_feature(self, grad, mv, sx, sy, mode, padding_mode):
        if grad.numel() == 0:
            return torch.zeros_like(grad, memory_format=self.mv_warp_out_format(grad))
        (out,) = self.run("mv_warp_backward_feature", dtype=grad.dtype, nhwc=strictly_channels_last(grad),
                          sizes=self.mv_warp_sizes(grad, mv, sx, sy, mode, padding_mode), inputs=[grad, mv],
                          output_shapes=[grad.shape])
        return out.contiguous(memory_format=self.mv_warp_out_format(grad))

    def mv_warp_backward_mv(self, grad, feature, mv, sx, sy, mode, padding_mode):
        if mv.numel() == 0 or feature.numel() == 0:
            return torch.zeros_like(mv)
        (out,) = self.run("mv_warp_backward_mv", dtype=feature.dtype, nhwc=strictly_channels_last(feature),
                          sizes=self.mv_warp_sizes(feature, mv, sx, sy, mode, padding_mode),
                          inputs=[grad, feature, mv], output_shapes=[mv.shape])
        return out

    # ---- local_attn ----

    def local_attn_sizes(self, q, v, kernel_size, scale, padding):
        N, C, H, W = q.shape
        return dict(N=N, C=C, Cv=v.shape[1], H=H, W=W, K=int(kernel_size), scale=float(scale), padding=padding)

    def local_attn_forward(self, q, k, v, kernel_size, scale, padding):
        fmt = _format(strictly_channels_last(q))  # both generations: channels_last out iff query is
        if v.numel() == 0:
            return torch.empty_like(v, memory_format=fmt)
        (out,) = self.run("local_attn_forward", dtype=q.dtype, nhwc=strictly_channels_last(q),
                          sizes=self.local_attn_sizes(q, v, kernel_size, scale, padding), inputs=[q, k, v],
                          output_shapes=[v.shape])
        return out.contiguous(memory_format=fmt)

    def local_attn_backward(self, grad, q, k, v, kernel_size, scale, padding):
        fmt = _format(strictly_channels_last(q))
        if q.shape[0] * q.shape[2] * q.shape[3] == 0:
            return tuple(torch.zeros_like(t, memory_format=fmt) for t in (q, k, v))
        outs = self.run("local_attn_backward", dtype=q.dtype, nhwc=strictly_channels_last(q),
                        sizes=self.local_attn_sizes(q, v, kernel_size, scale, padding), inputs=[grad, q, k, v],
                        output_shapes=[q.shape, k.shape, v.shape])
        return tuple(o.contiguous(memory_format=fmt) for o in outs)

    # ---- creff ----

    def creff_fused(self, key, mv, lr, weight, bias, kernel_size, scale, sx, sy):
        """The fused kernel's output, or None when the glue would compose the unfused ops instead."""
        N, C, H, W = key.shape
        sizes = dict(N=N, C=C, H=H, W=W, h=lr.shape[2], w=lr.shape[3], Hb=mv.shape[2], Wb=mv.shape[3],
                     K=int(kernel_size), scale=float(scale), msx=float(sx), msy=float(sy))
        outs = self.run("creff_forward", dtype=key.dtype, nhwc=creff_channels_last(key), sizes=sizes,
                        inputs=[key, mv, lr, weight, bias], output_shapes=[key.shape])
        return None if outs is None else outs[0]

    def creff_backward_fused(self, grad, key, mv, lr, weight, bias, kernel_size, scale, sx, sy):
        """(d key, d lr, d weight, d bias) as creff_backward_cuda computes them with the fused kernels, or None
        when the glue would compose the unfused ops instead (creff_cuda.cpp)."""
        N, C, H, W = key.shape
        sizes = dict(N=N, C=C, H=H, W=W, h=lr.shape[2], w=lr.shape[3], Hb=mv.shape[2], Wb=mv.shape[3],
                     K=int(kernel_size), scale=float(scale), msx=float(sx), msy=float(sy))
        outs = self.run("creff_backward", dtype=key.dtype, nhwc=False, sizes=sizes,
                        inputs=[grad, key, mv, lr, weight, bias],
                        output_shapes=[key.shape, key.shape, weight.shape, bias.shape])
        if outs is None:
            return None
        d_hr, d_lr_up, d_w, d_b = outs
        d_key = self.mv_warp_backward_feature(d_hr, mv, sx, sy, "bilinear", "zeros")
        acc = torch.float64 if key.dtype == torch.float64 else torch.float32
        a_y = _align_corners_matrix(H, lr.shape[2], d_lr_up.to(acc))
        a_x = _align_corners_matrix(W, lr.shape[3], d_lr_up.to(acc))
        d_lr = torch.matmul(torch.matmul(a_y.t(), d_lr_up.to(acc)), a_x).to(lr.dtype)
        return (d_key.contiguous(memory_format=_format(creff_channels_last(key))),
                d_lr.contiguous(memory_format=_format(creff_channels_last(lr))), d_w, d_b)


# ---- autograd: the formulas of _ops.py, with the emulated kernels ----


class _MvWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emu, feature, mv, sx, sy, mode, padding_mode):
        ctx.emu, ctx.args = emu, (sx, sy, mode, padding_mode)
        ctx.save_for_backward(feature, mv)
        return emu.mv_warp_forward(feature, mv, sx, sy, mode, padding_mode)

    @staticmethod
    def backward(ctx, grad):
        feature, mv = ctx.saved_tensors
        emu = ctx.emu
        if not (emu.experimental and strictly_channels_last(grad)):
            grad = grad.contiguous()
        gf = emu.mv_warp_backward_feature(grad, mv, *ctx.args) if ctx.needs_input_grad[1] else None
        gm = emu.mv_warp_backward_mv(grad, feature, mv, *ctx.args) if ctx.needs_input_grad[2] else None
        return None, gf, gm, None, None, None, None


class _LocalAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emu, q, k, v, kernel_size, scale, padding):
        ctx.emu, ctx.args = emu, (kernel_size, scale, padding)
        ctx.save_for_backward(q, k, v)
        return emu.local_attn_forward(q, k, v, kernel_size, scale, padding)

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = ctx.emu.local_attn_backward(grad, q, k, v, *ctx.args)
        return None, dq, dk, dv, None, None, None


def _creff_chain(emu, key, mv, lr, weight, bias, kernel_size, scale, sx, sy):
    """The composition the CUDA glue runs when the fused kernel does not (creff_cuda.cpp) and the recompute the
    fused op's backward differentiates (_ops.py): emulated mv_warp and local_attn, ATen's resize and convs."""
    C, H, W = key.shape[1:]
    hr = _MvWarp.apply(emu, key, mv, sx, sy, "bilinear", "zeros")
    lr_up = F.interpolate(lr, size=(H, W), mode="bilinear", align_corners=True)
    q, k, v = (F.conv2d(x, weight[i], bias[i], padding=1, groups=C) for i, x in enumerate((lr_up, hr, hr)))
    return lr_up + _LocalAttn.apply(emu, q, k, v, kernel_size, scale, "zeros")


class _Creff(torch.autograd.Function):
    """Forward: the fused kernel, or the composition where the glue composes. Backward: as the real op's autograd
    (_ops.py): the fused backward kernels (creff_backward) when opted in and mv needs no gradient, else the
    recompute through the unfused ops and their backward kernels."""

    @staticmethod
    def forward(ctx, emu, key, mv, lr, weight, bias, kernel_size, scale, sx, sy):
        ctx.emu, ctx.args = emu, (kernel_size, scale, sx, sy)
        ctx.save_for_backward(key, mv, lr, weight, bias)
        out = emu.creff_fused(key, mv, lr, weight, bias, kernel_size, scale, sx, sy)
        return _creff_chain(emu, key, mv, lr, weight, bias, kernel_size, scale, sx, sy) if out is None else out

    @staticmethod
    def backward(ctx, grad):
        need = ctx.needs_input_grad[1:6]
        if ctx.emu.experimental and not need[1] and not torch.is_grad_enabled():
            fused = ctx.emu.creff_backward_fused(grad, *ctx.saved_tensors, *ctx.args)
            if fused is not None:
                d_key, d_lr, d_w, d_b = fused
                return (None, d_key if need[0] else None, None, d_lr if need[2] else None, d_w if need[3] else None,
                        d_b if need[4] else None) + (None,) * 4
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:6])]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            out = _creff_chain(ctx.emu, *inputs, *ctx.args)
            grads = iter(torch.autograd.grad(out, wanted, grad))
        return (None,) + tuple(next(grads) if t.requires_grad else None for t in inputs) + (None,) * 4


def make(op, experimental, options):
    """The callable behind testing.cuda_emulated(op, ...)."""
    if op not in OPS:
        raise ValueError("cuda_emulated: unknown op %r (one of %s)" % (op, ", ".join(OPS)))
    emu = _Emulated(bool(experimental), options)

    def mv_warp(feature, mv, *, scale=1.0, mode="bilinear", padding_mode="zeros"):
        _check_dtype("mv_warp", feature, mv)
        check_mv_warp(feature, mv, mode, padding_mode)
        sx, sy = warp_scale(scale)
        return _MvWarp.apply(emu, feature, mv, sx, sy, mode, padding_mode)

    def local_attn(query, key, value, kernel_size=7, *, scale=1.0, padding="zeros"):
        _check_dtype("local_attn", query, key, value)
        check_local_attn(query, key, value, kernel_size, scale, padding)
        return _LocalAttn.apply(emu, query, key, value, int(kernel_size), float(scale), padding)

    def creff(key_feature, mv, lr_feature, weight, bias, *, kernel_size=7, scale=1.0, mv_scale=1.0):
        _check_dtype("creff", key_feature, mv, lr_feature, weight, bias)
        check_creff(key_feature, mv, lr_feature, weight, bias, kernel_size, scale)
        sx, sy = warp_scale(mv_scale, "creff", "mv_scale")
        fmt = _format(creff_channels_last(key_feature))
        args = (int(kernel_size), float(scale), sx, sy)
        if key_feature.numel() == 0:
            return torch.empty_like(key_feature, memory_format=fmt)
        out = _Creff.apply(emu, key_feature, mv, lr_feature, weight, bias, *args)
        return out.contiguous(memory_format=fmt)

    fn = {"mv_warp": mv_warp, "local_attn": local_attn, "creff": creff}[op]
    fn.kernels = emu.kernels
    fn.__qualname__ = fn.__name__ = "cuda_emulated_" + op
    return fn
