"""The data side, in pipeline order: a spec (`spec.py`) -> `mix build` (`build.py` locally,
`ray_build.py` on a Ray cluster, `progress.py` for people watching) -> a built mix read by
`mix.py` (inspect, documents, reports, the step -> batch sampler), `shards.py` (the shard
format from numpy) and `loader.py` (the zero-copy ring-buffer loader the trainer reads);
`tokenizer.py` is the Python face of the Rust encoder."""
