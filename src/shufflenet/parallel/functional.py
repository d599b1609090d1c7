"""The three collectives of group parallelism as autograd functions, channels at dim 1.

Gradient convention (as in Megatron-LM's tensor parallelism): a *sharded* tensor's gradient lives on the rank
that holds it; a *replicated* tensor computed identically on every rank has the same, complete gradient on
every rank. Each collective's backward keeps that invariant:

==================  ===================================  ================================================
function            forward                              backward
==================  ===================================  ================================================
``exchange``        all-to-all: layout ``src -> dst``    the inverse all-to-all, summing halo copies
``gather``          all-gather: sharded -> replicated    ``"split"``: keep own channels (the consumer is
                                                         replicated, its gradient is already complete);
                                                         ``"sum"``: reduce-scatter (the consumer is a
                                                         column-parallel layer, each rank holds a part)
``copy_to_shards``  identity (replicated stays)          all-reduce: the sharded consumers each computed
                                                         part of the input gradient
==================  ===================================  ================================================

One exception, :func:`allreduce_grads_of`: replicated layers *before* the first sharded layer (ShuffleNet's
stem) let each rank backpropagate its partial gradient and all-reduce their parameters' gradients instead
(a few kilobytes instead of the stem's output gradient, megabytes).

``torch.distributed.nn.functional.all_gather`` sums the gradient over ranks in backward, which counts a
replicated loss ``P`` times; hence these functions.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.autograd import Function

from .comm import ParallelContext, collective
from .layout import ExchangePlan

__all__ = ["exchange", "gather", "copy_to_shards", "allreduce_grads_of"]

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _row_bytes(t: torch.Tensor) -> int:
    return math.prod(t.shape[1:]) * t.element_size()


def _all_to_all(
    ctx: ParallelContext,
    tag: str,
    send: torch.Tensor,
    send_splits,
    recv_splits,
    rows_to_others: int,
) -> torch.Tensor:
    """``send`` (rows, ...) grouped by destination -> received rows grouped by source."""
    if ctx.world_size == 1:
        return send
    recv = send.new_empty((sum(recv_splits), *send.shape[1:]))
    collective(
        ctx,
        "all_to_all",
        tag,
        rows_to_others * _row_bytes(send),
        lambda: dist.all_to_all_single(
            recv, send, list(recv_splits), list(send_splits), group=ctx.group
        ),
    )
    return recv


class _Exchange(Function):
    @staticmethod
    def forward(fctx, x, send_index, recv_order, inv_recv_order, plan: ExchangePlan, ctx, tag):
        send = x.index_select(1, send_index).movedim(1, 0).contiguous()  # (c_send, N, *S)
        recv = _all_to_all(ctx, tag, send, plan.send_splits, plan.recv_splits, plan.sent_to_others)
        fctx.save_for_backward(send_index, inv_recv_order)
        fctx.meta = (plan, ctx, tag, x.shape)
        return recv.index_select(0, recv_order).movedim(0, 1).contiguous()  # (N, c_dst, *S)

    @staticmethod
    def backward(fctx, gy):
        send_index, inv_recv_order = fctx.saved_tensors
        plan, ctx, tag, x_shape = fctx.meta
        # back into receive-buffer order
        grecv = gy.movedim(1, 0).index_select(0, inv_recv_order).contiguous()
        gsend = _all_to_all(
            ctx, tag, grecv, plan.recv_splits, plan.send_splits, plan.received_from_others
        )
        # a channel sent to several ranks (halo copies) gets the sum of their gradients
        gx = gy.new_zeros(x_shape).index_add_(1, send_index, gsend.movedim(0, 1))
        return gx, None, None, None, None, None, None


def exchange(x, send_index, recv_order, inv_recv_order, plan, ctx, tag=""):
    """(N, c_src, *S) in layout ``src`` -> (N, c_dst, *S) in layout ``dst`` (see :class:`ExchangePlan`)."""
    return _Exchange.apply(x, send_index, recv_order, inv_recv_order, plan, ctx, tag)


class _Gather(Function):
    @staticmethod
    def forward(fctx, x, gather_rows, local_index, max_local: int, ctx, tag, grad_mode: str):
        n = x.shape[1]
        buf = x.movedim(1, 0)  # (n, N, *S)
        if n < max_local:  # all-gather needs equal chunks: pad
            buf = torch.cat([buf, buf.new_zeros((max_local - n, *buf.shape[1:]))])
        buf = buf.contiguous()
        if ctx.world_size == 1:
            out = buf
        else:
            out = buf.new_empty((ctx.world_size * max_local, *buf.shape[1:]))
            nbytes = (ctx.world_size - 1) * buf.numel() * buf.element_size()
            collective(
                ctx,
                "all_gather",
                tag,
                nbytes,
                lambda: _all_gather_single(out, buf, group=ctx.group),
            )
        fctx.save_for_backward(gather_rows, local_index)
        fctx.meta = (n, max_local, ctx, tag, grad_mode)
        return out.index_select(0, gather_rows).movedim(0, 1).contiguous()  # (N, C, *S)

    @staticmethod
    def backward(fctx, gy):
        gather_rows, local_index = fctx.saved_tensors
        n, max_local, ctx, tag, grad_mode = fctx.meta
        if grad_mode == "split" or ctx.world_size == 1:
            return gy.index_select(1, local_index), None, None, None, None, None, None
        rows = gy.movedim(1, 0)  # (C, N, *S)
        buf = rows.new_zeros((ctx.world_size * max_local, *rows.shape[1:]))
        buf.index_copy_(0, gather_rows, rows)  # rank-major chunks, padded
        out = buf.new_empty((max_local, *rows.shape[1:]))
        nbytes = (ctx.world_size - 1) * out.numel() * out.element_size()
        collective(
            ctx,
            "reduce_scatter",
            tag,
            nbytes,
            lambda: _reduce_scatter_single(out, buf, group=ctx.group),
        )
        return out[:n].movedim(0, 1).contiguous(), None, None, None, None, None, None


def gather(x, gather_rows, local_index, max_local, ctx, tag="", grad_mode="split"):
    """(N, c_local, *S) -> (N, C, *S) on every rank; ``grad_mode`` is ``"split"`` or ``"sum"``."""
    if grad_mode not in ("split", "sum"):
        raise ValueError(f"grad_mode={grad_mode!r} must be 'split' or 'sum'")
    return _Gather.apply(x, gather_rows, local_index, max_local, ctx, tag, grad_mode)


class _CopyToShards(Function):
    @staticmethod
    def forward(fctx, x, ctx, tag):
        fctx.meta = (ctx, tag)
        return x.view_as(x)

    @staticmethod
    def backward(fctx, gy):
        ctx, tag = fctx.meta
        if ctx.world_size == 1:
            return gy, None, None
        g = gy.contiguous().clone()
        nbytes = 2 * (ctx.world_size - 1) * g.numel() * g.element_size() // ctx.world_size
        collective(ctx, "all_reduce", tag, nbytes, lambda: dist.all_reduce(g, group=ctx.group))
        return g, None, None


def copy_to_shards(x, ctx, tag=""):
    """Identity forward; all-reduce of the gradient in backward (a replicated tensor feeding sharded layers)."""
    return _CopyToShards.apply(x, ctx, tag)


def allreduce_grads_of(params: dict[str, torch.nn.Parameter], ctx: ParallelContext) -> list:
    """Sum each parameter's gradient over the ranks as it is computed (a tensor hook, so gradient
    accumulation over several backward passes stays correct). For replicated layers whose output
    gradient is partial on each rank. Returns the hook handles."""
    handles = []
    for name, p in params.items():

        def hook(grad, tag=f"{name} (gradient)"):
            g = grad.contiguous().clone()
            if ctx.world_size > 1:
                nbytes = 2 * (ctx.world_size - 1) * g.numel() * g.element_size() // ctx.world_size
                collective(
                    ctx, "all_reduce", tag, nbytes, lambda: dist.all_reduce(g, group=ctx.group)
                )
            return g

        if p.requires_grad:
            handles.append(p.register_hook(hook))
    return handles
