"""`tinyllama.Mix`: a built mix directory, read-only.

A mix dir holds `mix.json` (the lock: tokenizer fingerprint, seq_len, stages, corpora; written
last, so its presence means the build completed), `schedule.json`, `tokenizer.json`, and per
corpus `corpora/NAME/{manifest.json, shard-*.bin, holdout-*.bin, dedup_report.parquet,
filter_report.parquet}` (the reports only where the corpus has dedup / filters).
`build.log` and `.lock` (the build's exclusive lock) sit beside them and are not part of the
mix: nothing pins them, and they differ between two builds of one spec.

A *family* mix (a spec with `[[branches.NAME.stages]]`) holds every corpus once and one
schedule per branch (`branches/NAME/schedule.json`: the trunk's stages, then the branch's own).
`Mix(DIR)` is its trunk (steps `0 .. branch_step()`), `Mix(DIR, branch="NAME")` one branch: its
batches equal the trunk's at every trunk step, and after the branch point every corpus continues
from the trunk's cursor (streams are keyed by corpus name), so trunk + branch reads no window
twice within an epoch and skips none.

Integrity where the data is used: opening a `Mix` checks the lock's format and seal and the
sha256 of every file it pins (schedule, tokenizer, manifests, dedup reports): an edited file
is one `ShardError` line naming it, a mix of an older format a `SpecError` saying "rebuild".
`documents()` verifies each shard (checksum over every byte, against its manifest entry; token
ids below the vocabulary) the first time this `Mix` reaches it; `verify()` checks them all.

A mix in a bucket (`Mix("s3://...", cache_dir=DIR, cache_bytes=N)`) is read the same way through
its shard cache (`_core.ShardCache`, rust/mix/shard_cache.rs): opening fetches only the small
files; `batch`, the loader, `documents` and `shards` fetch each shard the first time they need
it, verified before it enters the cache (so it is not verified again here). `documents` and
`shards` hand out mmapped views: a shard evicted while such a view lives keeps its disk space
until the view is freed (the sampler and the loader read with `pread` and hold nothing).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyllama import _core
from tinyllama.data.shards import ShardView, open_shard
from tinyllama.errors import ShardError, SpecError

_INSPECT_KEYS = ("files", "docs_read", "docs_filtered", "docs_skipped", "exact_duplicates",
                 "near_duplicates", "docs_kept", "docs_holdout", "tokens", "holdout_tokens", "shards")


class Mix:
    def __init__(self, path: str | os.PathLike[str], branch: str | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None, cache_bytes: int | None = None):
        """A built mix dir, or a mix in a bucket (`s3://...`: its small files fetched into
        `cache_dir`, each shard on first use, at most `cache_bytes` of shards kept; see
        `tinyllama.data.remote_mix`); `branch`: a family's branch."""
        self.url = str(path) if "://" in str(path) else None
        self._cache: _core.ShardCache | None = None
        if self.url:
            from tinyllama.data.remote_mix import cached_mix

            path = cached_mix(self.url, cache_dir)
            self._cache = _core.ShardCache(str(path), self.url, cache_bytes or None)
        self.path = Path(path)
        self.branch = branch
        lock = self.path / "mix.json"
        if not lock.is_file():
            staging = (self.path / ".staging").exists()
            why = "the build was interrupted; rerun `tinyllama mix build` to resume" if staging else (
                "build one with `tinyllama mix build --spec FILE`")
            raise SpecError(f"{self.path}: not a built mix (no mix.json): {why}")
        _core.verify_mix(str(self.path))  # the lock's format and seal, the pinned files' sha256
        self.lock: dict[str, Any] = json.loads(lock.read_text())
        if branch is not None and branch not in self.branches():
            raise SpecError(f"branch {branch!r}: no such branch in {self.path}; "
                            + (f"it has {', '.join(self.branches())}" if self.branches()
                               else "it is a plain mix, not a family (it has no branches)"))
        self._manifests: dict[str, dict] = {}
        self._sampler: _core.MixSampler | None = None
        self._doc_index: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        self._verified: set[Path] = set()

    # -- metadata --------------------------------------------------------------------------

    @property
    def corpora(self) -> list[str]:
        return [c["name"] for c in self.lock["corpora"]]

    @property
    def seq_len(self) -> int:
        return int(self.lock["seq_len"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.lock["tokenizer"]

    def branches(self) -> list[str]:
        """The branches of a family mix (sorted); [] for a plain mix."""
        return sorted(self.lock.get("branches") or {})

    def branch_step(self) -> int | None:
        """A family's branch point: the trunk's number of steps, the first step that is a
        branch's own (every branch's batches equal the trunk's before it). None for a plain mix."""
        b = self.lock.get("branch_step")
        return None if b is None else int(b)

    def stage_specs(self) -> list[dict]:
        """The stages of this view's whole schedule, as the spec gave them: the trunk's (a plain
        mix's), then this branch's own."""
        own = self.lock["branches"][self.branch]["stages"] if self.branch else []
        return list(self.lock["stages"]) + list(own)

    def epoch_warnings(self, limit: int = 4) -> list[str]:
        """One line per corpus whose schedule (the trunk's and every branch's) needs more than
        `limit` epochs of it: a full-scale spec built on sample data, say, repeats each window
        thousands of times."""
        out = []
        for branch in [None, *self.branches()] if not self.branch else [self.branch]:
            view = self._view(branch)
            for name, epochs in zip(view.corpora, view.sampler.epochs()):
                if epochs > limit:
                    where = f"branch {branch}" if branch else ("the trunk" if self.branches() else "the schedule")
                    out.append(f"warning: {where} needs {epochs:,} epochs of corpus {name} "
                               f"({view.sampler.cursors_at(view.num_steps())[view.corpora.index(name)]:,} windows "
                               f"drawn, {self._windows(name):,} per epoch): each window repeats that often")
        return out

    def _view(self, branch: str | None) -> Mix:
        """This mix as branch `branch` (one of `branches()`, or None: the trunk), sharing its
        shard cache."""
        if branch == self.branch:
            return self
        view = copy.copy(self)
        view.branch, view._sampler = branch, None
        return view

    def _windows(self, corpus: str) -> int:
        return next(int(c["windows"]) for c in self.lock["corpora"] if c["name"] == corpus)

    def manifest(self, corpus: str) -> dict:
        if corpus not in self._manifests:
            self._check_corpus(corpus)
            path = self.path / "corpora" / corpus / "manifest.json"
            try:
                self._manifests[corpus] = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ShardError(f"{path}: unreadable manifest: {e}") from None
        return self._manifests[corpus]

    def _check_corpus(self, corpus: str) -> None:
        if corpus not in self.corpora:
            raise SpecError(f"{corpus!r}: no such corpus in {self.path}; it has {', '.join(self.corpora)}")

    def inspect(self) -> dict[str, Any]:
        """The object `tinyllama mix inspect --json` prints."""
        corpora = {}
        for entry in self.lock["corpora"]:
            totals = self.manifest(entry["name"])["totals"]
            corpora[entry["name"]] = {k: totals[k] for k in _INSPECT_KEYS}
            # documents each filter of the corpus's chain dropped (zeros included; {} without filters)
            corpora[entry["name"]]["filters"] = dict(totals.get("filtered_by", {}))
            corpora[entry["name"]]["windows"] = entry["windows"]
        for name, epochs in zip(self.corpora, self.sampler.epochs()):  # of this view's schedule
            corpora[name]["epochs"] = epochs
        steps = self.sampler.stage_steps()
        stages = []
        for stage, (first, end) in zip(self.stage_specs(), steps):
            stages.append({
                **stage,
                "first_step": first,
                "steps": end - first,
                "batch_sequences": self.sampler.batch_sequences(first) if end > first else 0,
                "tokens_trained": (self.sampler.tokens_before(end) if end < self.num_steps()
                                   else self._total_tokens()) - self.sampler.tokens_before(first),
            })
        return {
            "name": self.lock["name"],
            "seed": self.lock["seed"],
            "seq_len": self.seq_len,
            "tokenizer_sha256": self.lock["tokenizer_sha256"],
            "vocab_size": self.lock["vocab_size"],
            "dtype": self.lock["dtype"],
            "bos_id": self.lock["bos_id"],
            "eos_id": self.lock["eos_id"],
            "num_steps": self.num_steps(),
            "total_tokens": self._total_tokens(),
            "stages": stages,
            "corpora": corpora,
            # the resolved settings of every filter, as the lock records them (None without filters)
            "filters": self.lock.get("filters"),
            # a family: this view (None = the trunk), the branch point and every branch's own
            # stages and length; None / {} for a plain mix
            "branch": self.branch,
            "branch_step": self.branch_step(),
            "branches": {name: {"num_steps": b["num_steps"], "stages": b["stages"]}
                         for name, b in sorted((self.lock.get("branches") or {}).items())},
        }

    # -- sampling --------------------------------------------------------------------------

    @property
    def sampler(self) -> _core.MixSampler:
        if self._sampler is None:
            self._sampler = _core.MixSampler(str(self.path), self.branch, self._cache)
        return self._sampler

    def num_steps(self) -> int:
        """Optimizer steps in the whole schedule."""
        return self.sampler.num_steps()

    def batch_sequences(self, step: int) -> int:
        """Global batch size (sequences) at `step`: the cooldown stage raises it."""
        return self.sampler.batch_sequences(step)

    def tokens_before(self, step: int) -> int:
        return self.sampler.tokens_before(step)

    def _total_tokens(self) -> int:
        last = self.num_steps() - 1
        return self.sampler.tokens_before(last) + self.sampler.batch_sequences(last) * self.seq_len

    def weights_at(self, step: int) -> dict[str, float]:
        return dict(zip(self.corpora, self.sampler.weights_at(step)))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, list[str]]:
        """Rank's contiguous slice of the global batch at `step`: (tokens int64 [n, seq_len + 1],
        the corpus of each row). A pure function of (mix, seed, step): the union of the ranks'
        slices is the world-size-1 batch, whatever `world`."""
        tokens, corpora = self.sampler.batch(step, rank, world)
        names = self.corpora
        return tokens.astype(np.int64), [names[c] for c in corpora]

    def samples(self, step: int, rank: int = 0, world: int = 1) -> list[tuple[str, int, int]]:
        """(corpus, epoch, window) of each row of `batch(step, rank, world)`."""
        names = self.corpora
        return [(names[c], e, w) for c, e, w in self.sampler.samples(step, rank, world)]

    def trace(self, step: int, rank: int = 0, world: int = 1):
        """Provenance of `batch(step, rank, world)`: one row per document fragment of every
        sequence, in order, as a polars.DataFrame with
            seq          the sequence's index in this rank's slice
            corpus, epoch, window
            source, row  the input file (relative to its corpus' base) and its line / parquet row
            doc          the document's index among the corpus' kept training documents
            doc_start, doc_end   the token span taken from the document ([start, end), BOS/EOS
                         counted as stored)
            seq_start    where the fragment starts in the sequence (its seq_len + 1 tokens)
        Concatenating each sequence's fragments gives its tokens exactly (tested)."""
        import polars as pl

        cols: dict[str, list] = {k: [] for k in ("seq", "corpus", "epoch", "window", "source", "row", "doc",
                                                 "doc_start", "doc_end", "seq_start")}
        width = self.seq_len + 1
        for i, (corpus, epoch, window) in enumerate(self.samples(step, rank, world)):
            starts, sources, files = self._document_index(corpus)
            a = window * self.seq_len
            b = a + width
            first = int(np.searchsorted(starts, a, side="right")) - 1
            last = int(np.searchsorted(starts, b, side="left"))  # exclusive
            for d in range(first, last):
                lo, hi = max(a, int(starts[d])), min(b, int(starts[d + 1]))
                cols["seq"].append(i)
                cols["corpus"].append(corpus)
                cols["epoch"].append(epoch)
                cols["window"].append(window)
                cols["source"].append(files[int(sources[d, 0])])
                cols["row"].append(int(sources[d, 1]))
                cols["doc"].append(d)
                cols["doc_start"].append(lo - int(starts[d]))
                cols["doc_end"].append(hi - int(starts[d]))
                cols["seq_start"].append(lo - a)
        schema = {"seq": pl.UInt32, "corpus": pl.Utf8, "epoch": pl.UInt64, "window": pl.UInt64, "source": pl.Utf8,
                  "row": pl.UInt64, "doc": pl.UInt64, "doc_start": pl.UInt64, "doc_end": pl.UInt64,
                  "seq_start": pl.UInt32}
        return pl.DataFrame(cols, schema=schema)

    def _document_index(self, corpus: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(start of every training document in the corpus' token stream + the end, their
        (file index, row), the manifest's file paths), built once per corpus from the shards'
        own offset tables (no token is read)."""
        if corpus not in self._doc_index:
            starts, sources, base = [np.zeros(1, dtype=np.uint64)], [], 0
            for shard in self.shards(corpus):
                starts.append(shard.offsets[1:].astype(np.uint64) + np.uint64(base))
                sources.append(np.asarray(shard.sources))
                base += int(shard.offsets[-1])
            files = [f["path"] for f in self.manifest(corpus)["files"]]
            self._doc_index[corpus] = (np.concatenate(starts), np.concatenate(sources) if sources
                                       else np.zeros((0, 2), dtype=np.uint64), files)
        return self._doc_index[corpus]

    def loader(self, rank: int = 0, world: int = 1, start_step: int = 0, **kw):
        """The zero-copy ring-buffer loader over this mix (see `tinyllama.data.loader`)."""
        from tinyllama.data.loader import Loader

        return Loader(self, rank=rank, world=world, start_step=start_step, **kw)

    # -- documents -------------------------------------------------------------------------

    def shards(self, corpus: str, *, holdout: bool = False) -> list[ShardView]:
        entries = self.manifest(corpus)["holdout_shards" if holdout else "shards"]
        return [open_shard(self._shard_path(corpus, e["name"])) for e in entries]

    def _shard_path(self, corpus: str, name: str) -> Path:
        """A shard's local path; a bucket mix's shard is fetched (and verified) first."""
        if self._cache is not None:
            return Path(self._cache.fetch(corpus, name))
        return self.path / "corpora" / corpus / name

    def documents(self, corpus: str, *, holdout: bool = False) -> Iterator[np.ndarray]:
        """The kept documents' tokens (BOS/EOS included as built), in input order. Zero-copy
        views into the mmapped shards, each shard verified the first time it is reached (a
        corrupt one raises `ShardError` naming it, and the document for an out-of-vocabulary id)."""
        entries = self.manifest(corpus)["holdout_shards" if holdout else "shards"]
        for entry in entries:
            path = self._shard_path(corpus, entry["name"])
            self._verify_once(path, entry)
            yield from open_shard(path)

    def _verify_once(self, path: Path, entry: dict) -> None:
        if self._cache is not None:
            return  # the cache verified it before publishing it
        if path not in self._verified:
            _core.verify_shard(str(path), self.lock.get("vocab_size"), entry["checksum"])
            self._verified.add(path)

    def document_sources(self, corpus: str, *, holdout: bool = False) -> Iterator[tuple[str, int]]:
        """(input file, row) of each document, parallel to `documents`."""
        files = [f["path"] for f in self.manifest(corpus)["files"]]
        for shard in self.shards(corpus, holdout=holdout):
            for file_index, row in shard.sources:
                yield files[int(file_index)], int(row)

    def verify(self) -> None:
        """Check every file the lock names: the pinned metadata, and every shard (footer
        against its manifest entry, checksum over every byte, token ids below the vocabulary).
        Raises naming the first bad file. A bucket mix's shards are fetched (each verified so
        before the cache publishes it; those already cached were verified when they were)."""
        if self._cache is None:
            _core.verify_mix(str(self.path), deep=True)
            return
        for corpus in self.corpora:
            for kind in ("shards", "holdout_shards"):
                for entry in self.manifest(corpus)[kind]:
                    self._cache.fetch(corpus, entry["name"])

    def dedup_report(self, corpus: str):
        """polars.DataFrame of removed duplicates: source, row, kept_source, kept_row, kind, jaccard."""
        import polars as pl

        self._check_corpus(corpus)
        path = self.path / "corpora" / corpus / "dedup_report.parquet"
        if path.exists():
            return pl.read_parquet(path)
        return pl.DataFrame(
            schema={"source": pl.Utf8, "row": pl.UInt64, "kept_source": pl.Utf8, "kept_row": pl.UInt64,
                    "kind": pl.Utf8, "jaccard": pl.Float32}
        )

    def filter_report(self, corpus: str):
        """polars.DataFrame of every document the corpus's filters dropped, in input order:
        source, row, filter, reason, and for `decontaminate` rows the benchmark `task` and
        `item` (its 0-based index in the task file) the document shared an n-gram with (null on
        other rows). Empty (same columns) for a corpus without filters."""
        import polars as pl

        self._check_corpus(corpus)
        path = self.path / "corpora" / corpus / "filter_report.parquet"
        if path.exists():
            df = pl.read_parquet(path)
        else:
            df = pl.DataFrame(schema={"source": pl.Utf8, "row": pl.UInt64, "filter": pl.Utf8, "reason": pl.Utf8})
        # "decontaminated: <task>#<item>: ..." (rust/filter/decontam.rs)
        hit = pl.col("reason").str.extract(r"^decontaminated: (.+?)#(\d+): ", 1)
        item = pl.col("reason").str.extract(r"^decontaminated: (.+?)#(\d+): ", 2).cast(pl.UInt64)
        return df.with_columns(hit.alias("task"), item.alias("item"))

    def plot(self, out: str | os.PathLike[str], points: int = 1500) -> None:
        """Draw the mixture proportions (stacked) and the global batch size over training tokens.
        A family's trunk view draws one panel per branch (trunk + branch, the branch point
        marked); a branch view draws that branch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        views = [self._view(b) for b in self.branches()] if self.branches() and not self.branch else [self]
        fig, axes = plt.subplots(len(views), 1, figsize=(10, 4.2 * len(views)), squeeze=False)
        for view, ax in zip(views, axes[:, 0]):
            view._plot_panel(ax, points)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)

    def _plot_panel(self, ax, points: int) -> None:
        n = self.num_steps()
        steps = set(np.linspace(0, n - 1, min(points, n)).astype(int).tolist())
        for first, end in self.sampler.stage_steps():  # sharp edges at stage boundaries
            steps.update({first, max(first - 1, 0), min(end, n - 1)})
        steps = sorted(s for s in steps if 0 <= s < n)
        tokens = np.array([self.sampler.tokens_before(s) for s in steps], dtype=np.float64)
        weights = np.array([self.sampler.weights_at(s) for s in steps])
        batch = np.array([self.sampler.batch_sequences(s) * self.seq_len for s in steps], dtype=np.float64)
        scale, unit = next((10**e, u) for e, u in ((12, "T"), (9, "B"), (6, "M"), (3, "K"), (0, ""))
                           if tokens[-1] >= 10**e)
        ax.stackplot(tokens / scale, weights.T, labels=self.corpora, alpha=0.8, step="post")
        ax.set_xlabel(f"tokens trained ({unit})")
        ax.set_ylabel("mixture proportion")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, tokens[-1] / scale)
        for first, _ in self.sampler.stage_steps()[1:]:
            ax.axvline(self.sampler.tokens_before(first) / scale, color="k", lw=0.8, ls=":")
        point = self.branch_step()
        if point is not None and self.branch and point < n:
            x = self.sampler.tokens_before(point) / scale
            ax.axvline(x, color="crimson", lw=2, ls="--", label=f"branch point (step {point:,})")
        twin = ax.twinx()
        twin.step(tokens / scale, batch / 1e6, where="post", color="k", lw=1.5, label="global batch")
        twin.set_ylabel("global batch (M tokens)")
        twin.set_ylim(0, batch.max() / 1e6 * 1.15)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
        ax.legend(handles, labels, loc="lower left")
        what = f"{self.lock['name']} / {self.branch}" if self.branch else self.lock["name"]
        ax.set_title(f"{what}: mixture and batch size ({n:,} steps)")

    def __repr__(self) -> str:
        branch = f", branch={self.branch!r}" if self.branch else ""
        return f"Mix({str(self.path)!r}{branch}, corpora={self.corpora})"
