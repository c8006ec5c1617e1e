"""The trainer: `tinyllama train --config FILE`, or `torchrun -m tinyllama.train CONFIG`.

    config.py      the train config: typed dataclasses from TOML, `--set` overrides
    loop.py        setup, one step, the loop (`train`)
    optim.py       AdamW parameter groups and the learning-rate schedule
    parallel.py    process group, device mesh, `parallelize` (compile, checkpointing, FSDP2 / HSDP)
    checkpoint.py  DCP checkpoints: atomic commit, checksums, resume with fall-back
    metrics.py     metrics.jsonl / TensorBoard, the loss window reduced over ranks, MFU
    preempt.py     SIGTERM / SIGUSR1 -> checkpoint and stop, all ranks agreeing
    plot.py        the loss curve of a run
"""

from tinyllama.train.loop import train, train_main

__all__ = ["train", "train_main"]
