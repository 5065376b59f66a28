"""Parallelism beyond DeepSpeed's data parallel: functions applied over the plain model, in one place.

    mesh.py       init_process_group, device_mesh(world, tensor): the (dp, tp) device mesh
    tensor.py     apply_tensor_parallel(model, tp_mesh): DTensor column/row parallel plans, vocab-parallel loss
    fsdp.py       apply_fsdp(model, dp_mesh, policy): torch.distributed.fsdp.fully_shard per block, then the root
    engine.py     FsdpEngine: the loop's Engine contract over the sharded model
    convert.py    an FSDP checkpoint (torch.distributed.checkpoint) <-> the local format

runtime/build.py builds the plain training model as for every engine, then `build_fsdp_engine` applies
tensor parallelism, then FSDP2, in that order (torchtitan's order: FSDP shards what TP left on each rank).
The ranks are launched by torchrun (runtime/launch.py); runtime/rank.py runs each.
"""
