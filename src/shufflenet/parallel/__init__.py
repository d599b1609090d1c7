"""Filter groups across devices: AlexNet-style model parallelism on ``torch.distributed``.

With ``P`` processes (``P`` divides the groups ``g``), rank ``r`` holds the filters of ``g / P`` groups of
every grouped convolution and computes only their channels. Activations stay sharded by channel between layers
that do not mix groups (grouped and depthwise convs, batch norm, activations, pooling); the channel shuffle
between two group convolutions is one all-to-all; dense layers read an all-gathered input. Gradients flow
through every collective (:mod:`.functional`).

Typical use under ``torchrun --nproc-per-node P``::

    model = shufflenet.create_model("shufflenet_v1_g4_x1_0", num_classes=10)   # same seed on every rank
    pmodel = shufflenet.parallel.build_group_parallel(model)                   # inits the process group
    logits = pmodel(x)                       # the same batch x on every rank; full logits on every rank
    loss = criterion(logits, y); loss.backward(); optimizer.step()   # no DDP, no gradient all-reduce
    shufflenet.parallel.save_group_parallel("model.safetensors", pmodel)   # an ordinary model file

See :mod:`.training` for what else a training loop must do differently.
"""

from .build import build_group_parallel, convert_group_parallel
from .comm import CommCounter, GroupParallelError, ParallelContext, count_comm
from .layout import ChannelLayout
from .state import (
    gather_grads,
    gather_model,
    gather_state_dict,
    load_full_state_dict,
    save_group_parallel,
    shard_layouts,
)
from .training import (
    broadcast_batch,
    clip_grad_norm_,
    replica_divergence,
    replicated_parameters,
    sharded_parameters,
    sync_replicated_grads,
)

__all__ = [
    "ChannelLayout",
    "CommCounter",
    "GroupParallelError",
    "ParallelContext",
    "broadcast_batch",
    "build_group_parallel",
    "clip_grad_norm_",
    "convert_group_parallel",
    "count_comm",
    "gather_grads",
    "gather_model",
    "gather_state_dict",
    "load_full_state_dict",
    "replica_divergence",
    "replicated_parameters",
    "save_group_parallel",
    "shard_layouts",
    "sharded_parameters",
    "sync_replicated_grads",
]
