"""Channel layouts: which global channels each rank holds, and the exchange plans between two layouts.

A sharded activation of ``C`` channels is stored on rank ``r`` as a tensor ``(N, len(parts[r]), *S)`` whose
local channel ``i`` is global channel ``parts[r][i]``. A layout is pure bookkeeping: it fixes what every
collective must move, so all plans are computed once, when the group-parallel model is built.

- ``ChannelLayout.blocks(C, P)``: contiguous blocks, ``C / P`` channels per rank (the layout of a grouped conv
  whose ``g / P`` consecutive groups live on each rank).
- ``ChannelLayout.replicated(C)``: every rank holds all channels (dense layers: stem, classifier).
- ``relabel(perm)``: a channel permutation such as the shuffle costs nothing: the data stays where it is and
  only the global names of the channels change (``y[:, o] = x[:, perm[o]]``, so channel ``c`` becomes ``o``
  with ``perm[o] = c``). The exchange happens later, when a grouped conv needs contiguous blocks again.

A :class:`ExchangePlan` moves data from one layout to another with one all-to-all: rank ``r`` sends to rank
``d`` the channels ``d`` needs and ``r`` owns, and places what it receives in ``d``'s storage order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from ..ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle, channel_shuffle_indices

__all__ = ["ChannelLayout", "ExchangePlan", "plan_exchange", "shuffle_permutation"]


@dataclasses.dataclass(frozen=True)
class ChannelLayout:
    """Global channel indices held by each rank, in local storage order; ``parts=None`` means replicated."""

    channels: int
    world_size: int
    parts: tuple[tuple[int, ...], ...] | None

    @classmethod
    def blocks(cls, channels: int, world_size: int) -> ChannelLayout:
        """Contiguous blocks; when ``world_size`` does not divide ``channels`` the first ranks get one more."""
        base, extra = divmod(channels, world_size)
        parts, start = [], 0
        for r in range(world_size):
            n = base + (1 if r < extra else 0)
            parts.append(tuple(range(start, start + n)))
            start += n
        return cls(channels, world_size, tuple(parts))

    @classmethod
    def replicated(cls, channels: int, world_size: int) -> ChannelLayout:
        return cls(channels, world_size, None)

    @classmethod
    def from_parts(cls, channels: int, parts: Sequence[Sequence[int]]) -> ChannelLayout:
        return cls(channels, len(parts), tuple(tuple(int(c) for c in p) for p in parts))

    @property
    def is_replicated(self) -> bool:
        return self.parts is None

    def local(self, rank: int) -> tuple[int, ...]:
        """Global channels held by ``rank`` (all of them when replicated)."""
        return tuple(range(self.channels)) if self.parts is None else self.parts[rank]

    def is_partition(self) -> bool:
        """Every channel is held by exactly one rank."""
        if self.parts is None:
            return False
        flat = sorted(c for p in self.parts for c in p)
        return flat == list(range(self.channels))

    def relabel(self, perm: Sequence[int]) -> ChannelLayout:
        """The layout of ``y = x[:, perm]`` when ``x`` has this layout (no data moves)."""
        if self.parts is None:
            return self
        new_name = [0] * self.channels
        for o, c in enumerate(perm):
            new_name[int(c)] = o
        return ChannelLayout(
            self.channels, self.world_size, tuple(tuple(new_name[c] for c in p) for p in self.parts)
        )

    def concat(self, other: ChannelLayout) -> ChannelLayout:
        """The layout of ``torch.cat([a, b], dim=1)`` with ``a`` in this layout and ``b`` in ``other``."""
        if self.parts is None or other.parts is None:
            raise ValueError("concat of a replicated layout is not a sharded layout")
        parts = tuple(
            a + tuple(self.channels + c for c in b) for a, b in zip(self.parts, other.parts)
        )
        return ChannelLayout(self.channels + other.channels, self.world_size, parts)

    def owner(self) -> list[int]:
        """``owner()[c]``: the lowest rank holding channel ``c`` (-1 for none)."""
        own = [-1] * self.channels
        for r in reversed(range(self.world_size)):
            for c in self.local(r):
                own[c] = r
        return own


@dataclasses.dataclass(frozen=True)
class ExchangePlan:
    """One rank's side of an all-to-all that turns layout ``src`` into layout ``dst``.

    ``send_index``: local source channels to send, grouped by destination rank (``send_splits`` each);
    ``recv_splits``: channels received from each source rank; ``recv_order[i]``: the row of the receive
    buffer that becomes local destination channel ``i``; ``sent_to_others`` / ``received_from_others``:
    channels that cross to or from another rank (what the all-to-all costs).
    """

    send_index: tuple[int, ...]
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]
    recv_order: tuple[int, ...]
    sent_to_others: int
    received_from_others: int


def plan_exchange(src: ChannelLayout, dst: ChannelLayout, rank: int) -> ExchangePlan:
    """Plan for ``rank``: each destination channel comes from the destination rank itself when it holds it,
    otherwise from the lowest rank that does. ``dst`` may hold a channel on several ranks (halos)."""
    if src.parts is None or dst.parts is None:
        raise ValueError("an exchange plan is between two sharded layouts")
    if src.channels != dst.channels or src.world_size != dst.world_size:
        raise ValueError(f"layouts differ in channels or ranks: {src.channels} vs {dst.channels}")
    world = src.world_size
    pos = [{c: i for i, c in enumerate(p)} for p in src.parts]  # pos[s][c]: local position on s
    owner = src.owner()

    def source_of(c: int, d: int) -> int:
        if c in pos[d]:
            return d
        if owner[c] < 0:
            raise ValueError(f"channel {c} is needed by rank {d} but held by no rank")
        return owner[c]

    # routes[s][d]: destination positions on d (in order) that s sends.
    routes = [
        [[i for i, c in enumerate(dst.parts[d]) if source_of(c, d) == s] for d in range(world)]
        for s in range(world)
    ]
    send_index: list[int] = []
    send_splits = []
    for d in range(world):
        idx = [pos[rank][dst.parts[d][i]] for i in routes[rank][d]]
        send_index += idx
        send_splits.append(len(idx))
    recv_splits = [len(routes[s][rank]) for s in range(world)]
    recv_order = [0] * len(dst.parts[rank])
    row = 0
    for s in range(world):
        for i in routes[s][rank]:
            recv_order[i] = row
            row += 1
    return ExchangePlan(
        tuple(send_index),
        tuple(send_splits),
        tuple(recv_splits),
        tuple(recv_order),
        sum(n for d, n in enumerate(send_splits) if d != rank),
        sum(n for s, n in enumerate(recv_splits) if s != rank),
    )


def shuffle_permutation(shuffle_module: nn.Module, channels: int) -> list[int]:
    """``perm`` with ``shuffle_module(x)[:, o] == x[:, perm[o]]`` for a shuffle, an unshuffle or an identity."""
    if isinstance(shuffle_module, nn.Identity):
        return list(range(channels))
    if isinstance(shuffle_module, ChannelShuffle | ChannelUnshuffle):
        return channel_shuffle_indices(
            channels, shuffle_module.groups, shuffle_module.inverse
        ).tolist()
    raise TypeError(
        f"{type(shuffle_module).__name__} is not a channel permutation "
        "(expected ChannelShuffle, ChannelUnshuffle or nn.Identity)"
    )
