"""Multi-node training with no shared filesystem (issue 27): two torchrun agents (a c10d rendezvous
on 127.0.0.1), each started in a working dir of its own with a relative `out`, so that each node
has an out dir the other cannot see, as on a cloud cluster of local disks. Each node keeps its
part of every checkpoint; the whole checkpoint is committed only in run.upload_to (moto's S3
server on 127.0.0.1), and a resume on two fresh, empty nodes fetches it onto both and repeats the
losses of an uninterrupted run (train/out_dir.py, train/checkpoint.py, train/remote.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    from test_family import family_spec

    from tinyllama.data.build import build_mix

    root = tmp_path_factory.mktemp("fam")
    build_mix(family_spec(root), root / "mix", 2, progress=False)
    return root / "mix"


def two_nodes(dirs: list[Path], config: Path, *args: str, per_node: int = 1,
              timeout: int = 600) -> list[tuple[int, str]]:
    """`torchrun --nnodes 2 --nproc-per-node PER_NODE -m tinyllama.train train.toml ARGS` as two agents,
    the first started in dirs[0] and the second in dirs[1], each with its own copy of `config`
    (a relative `out` is taken relative to the config file): (exit status, stderr) of each."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TINYLLAMA_UPLOAD_WAIT_S": "120"}
    procs = []
    for n, cwd in enumerate(dirs):
        cwd.mkdir(parents=True, exist_ok=True)
        (cwd / "train.toml").write_text(config.read_text())
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc-per-node={per_node}",
             f"--node-rank={n}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
             f"--rdzv-id=own-out-{port}", "--max-restarts=0", "-m", "tinyllama.train", "train.toml", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


def config(dir: Path, mix: Path, *run_keys: str, micro: str = "micro_batch = 4") -> Path:
    """test_family's trunk config with a relative out ("run"): each agent's own dir; `run_keys`
    are lines of its [run] table."""
    from test_family import TRAIN

    dir.mkdir(parents=True, exist_ok=True)
    p = dir / "train.toml"
    text = TRAIN.format(mix=mix, out="run").replace("micro_batch = 4", micro)
    p.write_text(text.replace("[run]\n", "[run]\n" + "".join(k + "\n" for k in run_keys)))
    return p


def losses(out: Path) -> dict[int, float]:
    from test_family import metrics

    return {r["step"]: r["loss"] for r in metrics(out)}


def files(step_dir: Path) -> set[str]:
    return {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()}


def test_nodes_without_a_shared_out_need_a_bucket(fam, tmp_path):
    """Without run.upload_to no node could hold a whole checkpoint: refused in one line on every
    rank, before a step is trained."""
    cfg = config(tmp_path, fam)
    got = two_nodes([tmp_path / "n0", tmp_path / "n1"], cfg)
    for code, err in got:
        assert code != 0
        lines = [ln for ln in err.splitlines() if ln.startswith("error")]
        assert lines and "do not share this out dir" in lines[0] and "run.upload_to" in lines[0], err[-3000:]
        assert f'File "{ROOT / "tinyllama"}' not in err, err[-3000:]  # torchrun's own traceback follows; not ours
    assert not (tmp_path / "n0/run/metrics.jsonl").exists()
    assert not (tmp_path / "n0/run/checkpoints").exists() and not (tmp_path / "n1/run/checkpoints").exists()
    assert not list(tmp_path.rglob(".nodes-probe-*")), "rank 0's probe is removed once every node has looked"


def run_dir(nodes: list[Path]) -> Path:
    """The out dir of the node that got rank 0 (the rendezvous, not the launch order, decides)."""
    (first,) = [d / "run" for d in nodes if (d / "run/metrics.jsonl").exists()]
    return first


@pytest.mark.slow
@pytest.mark.parametrize("per_node", [1, 2])
def test_each_node_keeps_its_part_the_bucket_the_whole_and_a_resume_on_new_nodes_continues(s3, fam, tmp_path,
                                                                                           per_node):
    """2 nodes x `per_node` ranks (2 x 2: HSDP, each node's ranks sharing the digests of its part)."""
    from test_family import run, train_config

    from tinyllama import _core
    from tinyllama.train.checkpoint import verify
    from tinyllama.train.remote import fetch

    name, _ = s3
    url = f"s3://{name}/runs/own-out"
    micro = f"micro_batch = {4 // per_node}"  # the global batch of 8 sequences splits over 2 x per_node ranks
    run(train_config(tmp_path / "whole", fam, tmp_path / "whole/run"))
    whole = losses(tmp_path / "whole/run")
    cfg = config(tmp_path / "cfg", fam, f'upload_to = "{url}"', micro=micro)

    a = [tmp_path / "a0", tmp_path / "a1"]
    for code, err in two_nodes(a, cfg, "--set", "run.stop_after=4", per_node=per_node):
        assert code == 0, err[-5000:]
    # each node's dir holds its own ranks' part; rank 0's also the index, trainer.json and the run's log
    main = run_dir(a)
    parts = sorted((d / "run/checkpoints/step-4" for d in a), key=lambda p: p.parent.parent != main)
    ranks = [range(0, per_node), range(per_node, 2 * per_node)]
    def written_by(rs) -> set[str]:
        return {f"rng/rank-{r}.pt" for r in rs} | {f"__{r}_0.distcp" for r in rs}

    for part, mine, theirs in zip(parts, ranks, reversed(ranks)):
        assert written_by(mine) | {"checksums.json"} <= files(part) and not files(part) & written_by(theirs)
    assert {".metadata", "trainer.json"} <= files(parts[0]) and not files(parts[1]) & {".metadata", "trainer.json"}
    assert verify(parts[0]) is not None  # a part never passes for a checkpoint
    assert not list(main.glob(".nodes-probe-*"))
    # the bucket holds the whole checkpoint, committed, and none of the nodes' markers
    b = _core.Bucket(url)
    keys = {k.split("checkpoints/", 1)[1] for k, _, _ in b.list("runs/own-out/checkpoints")}
    assert {"step-4/COMMITTED", "latest"} | {f"step-4/rng/rank-{r}.pt" for r in range(2 * per_node)} <= keys
    assert not [k for k in keys if "/.parts/" in k]
    assert b.get("runs/own-out/checkpoints/latest") == b"step-4\n"
    fetched = fetch(url, tmp_path / "fetched")
    assert verify(fetched) is None and files(fetched) >= files(parts[0]) | files(parts[1])

    # two new nodes with empty disks: --resume fetches step-4 onto both and goes on to the end
    # (saving asynchronously: the writer thread keeps each node's part the same way)
    fresh = [tmp_path / "b0", tmp_path / "b1"]
    got = two_nodes(fresh, cfg, "--resume", "--set", "run.async_checkpoint=true", per_node=per_node)
    for code, err in got:
        assert code == 0, err[-5000:]
    assert "fetched step-4 from" in "".join(err for _, err in got)
    resumed = losses(run_dir(fresh))
    assert sorted(resumed) == [5, 6, 7, 8]
    for s, loss in {**losses(main), **resumed}.items():
        assert loss == pytest.approx(whole[s], rel=1e-4, abs=1e-4), s
    assert b.get("runs/own-out/checkpoints/latest") == b"step-8\n"
    assert verify(fetch(f"{url}/checkpoints/step-8", tmp_path / "fetched8")) is None
    # a new run (no --resume) on nodes whose dirs hold parts is refused on every rank
    other = config(tmp_path / "cfg2", fam, f'upload_to = "s3://{name}/runs/other"', micro=micro)
    for code, err in two_nodes(fresh, other, per_node=per_node):
        assert code != 0 and "already holds checkpoints" in err, err[-3000:]


def test_a_step_is_committed_only_once_every_node_has_uploaded_its_part_of_that_save(s3, server, tmp_path, monkeypatch):
    """The uploaders of two nodes (no torchrun: the commit protocol alone). A node whose upload
    fails leaves its error for rank 0, which does not commit; a marker of another save of the same
    step is not taken for this one; once both parts of this save are there, the step is committed
    and the markers removed."""
    from s3_server import FlakyProxy

    from tinyllama import _core
    from tinyllama.train.remote import Uploader, committed_steps

    name, client = s3
    url = f"s3://{name}/runs/parts"
    ckpts = "runs/parts/checkpoints"

    def part(node: int, step: int, sums: str) -> Path:
        d = tmp_path / f"n{node}/step-{step}"
        (d / "rng").mkdir(parents=True, exist_ok=True)
        (d / "rng" / f"rank-{node}.pt").write_bytes(bytes([node]) * 100)
        (d / "checksums.json").write_text(sums)
        if node == 0:
            (d / "trainer.json").write_text(json.dumps({"step": step}))
        return d

    def upload(uploader: Uploader, path: Path) -> list[str]:
        said: list[str] = []
        uploader.warn = said.append
        uploader.submit(path)
        uploader.wait()
        return said

    b = _core.Bucket(url)
    zero = Uploader(url, 5, None, rank=0, others=[1])
    # node 1's first request is dropped (no retries): its part fails; its error marker gets through
    proxy = FlakyProxy(client.meta.endpoint_url, slowdowns=0, resets=1)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("TINYLLAMA_S3_RETRIES", "0")
        one = Uploader(url, 5, None, rank=1)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server)
        said = upload(one, part(1, 2, '{"save": "a"}'))
        assert len(said) == 1 and "upload of step-2" in said[0] and "the nodes keep their parts" in said[0]
        said = upload(zero, part(0, 2, '{"save": "a"}'))
        assert len(said) == 1 and "the node of rank 1 could not upload its part" in said[0], said
        assert committed_steps(b, ckpts) == []
        # node 1 again (its connection is fine now): this save of step 2 is committed, its markers gone
        assert upload(one, part(1, 2, '{"save": "a"}')) == []
        assert upload(zero, part(0, 2, '{"save": "a"}')) == []
        assert committed_steps(b, ckpts) == [2]
        keys = {k for k, _, _ in b.list(ckpts)}
        assert f"{ckpts}/step-2/rng/rank-1.pt" in keys and f"{ckpts}/step-2/checksums.json" in keys
        assert not [k for k in keys if "/.parts/" in k] and b.get(f"{ckpts}/latest") == b"step-2\n"
        # step 4: node 1's marker is of another save (another checksums.json): not committed
        assert upload(one, part(1, 4, '{"save": "b"}')) == []
        monkeypatch.setenv("TINYLLAMA_UPLOAD_WAIT_S", "1")
        said = upload(zero, part(0, 4, '{"save": "c"}'))
        assert len(said) == 1 and "did not upload its part of step-4 within" in said[0], said
        assert committed_steps(b, ckpts) == [2] and b.head(f"{ckpts}/step-4/checksums.json") is None
    finally:
        proxy.close()
