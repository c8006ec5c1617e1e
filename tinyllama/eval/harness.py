"""The model cards' evaluation table through lm-evaluation-harness (`lm_eval`), offline.

    run_harness(CKPT_OR_HF_DIR, ["hellaswag", "openbookqa", ...], data_dir=DIR)

A training checkpoint is first exported to a temporary Hugging Face dir (`tinyllama.hf.export`);
an HF dir is used as it is. lm_eval's own HF wrapper (`HFLM`) runs the tasks zero-shot with
Hugging Face's hub and datasets switched offline: nothing is ever downloaded.

Where the data comes from (see docs/eval.md):

- the seven model-card tasks read local copies: `data_dir/<task>/<split>.{jsonl,json,parquet}`
  (the split lm_eval scores: `test` for openbookqa / arc_*, `validation` for the others). For
  each one we write a one-line override of lm_eval's own task YAML (`include:` it, then point
  `dataset_path` / `data_files` at the file), so prompts and metrics stay the harness's own.
- any task YAML in `include_path` (lm_eval's local-file format: `dataset_path: json|parquet|csv`
  + `dataset_kwargs.data_files`); relative `data_files` are taken relative to the YAML file.

Every data file is checked before lm_eval starts: a missing one is an `InputError` naming it.

The metric per task is the model cards' (TinyLlama's EVAL.md: `acc_norm` where the task has it,
`acc` for winogrande and boolq); the average is over the tasks run. Results compare against the
published rows shipped in `tinyllama/eval/model_cards.csv`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinyllama.errors import InputError, SpecError

# The model cards' columns, in their order: task -> (column, metric).
CARD_TASKS: dict[str, tuple[str, str]] = {
    "hellaswag": ("HellaSwag", "acc_norm"),
    "openbookqa": ("Obqa", "acc_norm"),
    "winogrande": ("WinoGrande", "acc"),
    "arc_challenge": ("ARC_c", "acc_norm"),
    "arc_easy": ("ARC_e", "acc_norm"),
    "boolq": ("boolq", "acc"),
    "piqa": ("piqa", "acc_norm"),
}
DEFAULT_TASKS = tuple(CARD_TASKS)
MODEL_CARDS = Path(__file__).parent / "model_cards.csv"
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_LOADER = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as e:
        raise SpecError(
            f"`tinyllama eval --tasks` needs lm-evaluation-harness: pip install 'tinyllama-pretrain[eval]' ({e})"
        ) from None
    import lm_eval

    return lm_eval


# ---- task configs: the seven model-card tasks on local files, and user YAMLs -------------------


@functools.lru_cache(maxsize=1)
def _builtin_index() -> dict:
    """lm_eval's own task index (scanning its thousands of YAMLs takes seconds: once)."""
    from lm_eval.tasks import TaskManager

    return dict(TaskManager().task_index)


def _builtin_yaml(task: str) -> Path:
    entry = _builtin_index().get(task)
    if entry is None or not getattr(entry, "yaml_path", None):
        raise SpecError(f"--tasks: lm_eval has no task {task!r}")
    return Path(entry.yaml_path)


def _load_yaml(path: Path) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(path, resolve_func=False)
    except FileNotFoundError as e:
        raise InputError(f"{path}: task YAML not found ({e.filename})") from None
    except Exception as e:  # noqa: BLE001  (yaml raises many kinds: name the file)
        raise InputError(f"{path}: not a valid lm_eval task YAML: {e}") from None


def eval_split(cfg: dict) -> str:
    """The split lm_eval scores for a task config: test when it has one, else validation."""
    split = cfg.get("test_split") or cfg.get("validation_split")
    if not split:
        raise SpecError(f"task {cfg.get('task')!r} has neither test_split nor validation_split")
    return split


def local_file(data_dir: Path, task: str, split: str) -> Path:
    """`data_dir/<task>/<split>.{jsonl,json,parquet}`; a clear error naming what is missing."""
    cands = [data_dir / task / f"{split}{s}" for s in _DATA_SUFFIXES]
    for c in cands:
        if c.is_file():
            return c
    raise InputError(
        f"{cands[0]}: dataset file for task {task!r} not found (also tried "
        f"{', '.join(c.name for c in cands[1:])}); see docs/eval.md for how to make local copies"
    )


def _write_yaml(path: Path, cfg: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _card_override(task: str, data_dir: Path) -> dict:
    """lm_eval's YAML for `task`, re-pointed at the local copy in `data_dir`."""
    src = _builtin_yaml(task)
    cfg = _load_yaml(src)
    split = eval_split(cfg)
    f = local_file(data_dir, task, split)
    over: dict[str, Any] = {
        "include": str(src),
        "task": task,
        "dataset_path": _LOADER[f.suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(f.resolve())}},
        # Zero-shot: only the scored split is read, so only it needs a local copy.
        "training_split": None,
        "fewshot_split": None,
    }
    for key in ("validation_split", "test_split"):
        if cfg.get(key) and cfg[key] != split:
            over[key] = None
    return over


def _user_yamls(include_path: Path) -> dict[str, Path]:
    paths = [include_path] if include_path.is_file() else sorted(include_path.rglob("*.yaml"))
    if not include_path.exists():
        raise InputError(f"{include_path}: --include-path not found")
    found: dict[str, Path] = {}
    for p in paths:
        cfg = _load_yaml(p)
        name = cfg.get("task")
        if isinstance(name, str):
            found[name] = p
    return found


def _user_override(task: str, src: Path) -> dict | None:
    """Resolve a user YAML's relative `data_files` against the YAML's dir, checking each file."""
    cfg = _load_yaml(src)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        if cfg.get("dataset_path") in _LOADER.values():
            raise InputError(f"{src}: task {task!r} reads local files but names none (dataset_kwargs.data_files)")
        return None  # a hub dataset: lm_eval (offline) reports it if it is not cached

    def fix(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        p = Path(v)
        p = p if p.is_absolute() else src.parent / p
        if not p.is_file():
            raise InputError(f"{p}: dataset file for task {task!r} not found (named by {src})")
        return str(p.resolve())

    resolved = {k: fix(v) for k, v in files.items()} if isinstance(files, dict) else fix(files)
    kwargs = dict(cfg.get("dataset_kwargs") or {}, data_files=resolved)
    return {"include": str(src.resolve()), "task": task, "dataset_kwargs": kwargs}


def prepare_tasks(
    tasks: Sequence[str], data_dir: str | os.PathLike[str] | None, include_path: str | os.PathLike[str] | None,
    out_dir: Path,
) -> Path:
    """Write into `out_dir` one override YAML per task (local data files resolved and checked);
    returns `out_dir`, to be given to lm_eval's TaskManager as the last include path."""
    user = _user_yamls(Path(include_path)) if include_path is not None else {}
    for task in tasks:
        if task in user:
            over = _user_override(task, user[task])
        elif task in CARD_TASKS:
            if data_dir is None:
                raise SpecError(
                    f"--tasks {task}: no local data (pass --data-dir DIR holding {task}/<split>.jsonl, "
                    "see docs/eval.md); tinyllama never downloads datasets"
                )
            over = _card_override(task, Path(data_dir))
        else:
            _builtin_yaml(task)  # raises for an unknown task
            raise SpecError(
                f"--tasks {task}: not one of the model-card tasks ({', '.join(CARD_TASKS)}) and not in "
                "--include-path: write a local-file task YAML for it (see docs/eval.md)"
            )
        if over is not None:
            _write_yaml(out_dir / f"{task}.yaml", over)
    return out_dir


# ---- running -----------------------------------------------------------------------------------


@contextmanager
def _offline():
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tokens_seen(path: str | os.PathLike[str]) -> int | None:
    """Tokens trained so far, from a checkpoint's trainer.json (None for an HF dir)."""
    from tinyllama.hf import is_hf_dir, trainer_state

    if is_hf_dir(path):
        return None
    t = trainer_state(path).get("tokens")
    return int(t) if t is not None else None


def task_metric(task: str, metrics: dict) -> tuple[str, float | None, float | None]:
    """(metric name, value, stderr) for one task of lm_eval's `results`: the model cards'
    metric, else acc_norm when the task has it, else acc."""
    pref = [CARD_TASKS[task][1]] if task in CARD_TASKS else ["acc_norm", "acc"]
    for m in pref + ["acc_norm", "acc"]:
        key = f"{m},none"
        if key in metrics:
            err = metrics.get(f"{m}_stderr,none")
            return m, float(metrics[key]), (float(err) if isinstance(err, (int, float)) else None)
    return pref[0], None, None


def run_harness(
    path: str | os.PathLike[str],
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    limit: int | float | None = None,
    include_path: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> dict:
    """Run `tasks` zero-shot on a checkpoint or HF dir; returns the row (see `make_row`).

    `out`: a .json or .csv file to append the row to (JSON: one object per line)."""
    from tinyllama.hf import export, is_hf_dir

    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise SpecError("--tasks: no task given")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SpecError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if batch_size < 1:
        raise SpecError(f"--batch-size must be >= 1, got {batch_size}")
    lm_eval = _require_lm_eval()
    src = Path(path)
    with tempfile.TemporaryDirectory(prefix="tinyllama-harness-") as tmp:
        tmp = Path(tmp)
        # Check every data file before exporting or loading anything.
        (tmp / "tasks").mkdir()
        task_dir = prepare_tasks(tasks, data_dir, include_path, tmp / "tasks")
        tokens = tokens_seen(src)
        hf_dir = src if is_hf_dir(src) else export(src, tmp / "hf", tokenizer=tokenizer)
        with _offline():
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager

            includes = [str(Path(include_path).resolve())] if include_path is not None else []
            manager = TaskManager(include_path=includes + [str(task_dir)])
            lm = HFLM(pretrained=str(hf_dir), dtype=dtype, device=device, batch_size=batch_size)
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=0,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=1000,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
    if res is None:  # non-zero ranks under torch.distributed
        return {}
    row = make_row(src, tasks, res["results"], tokens, limit=limit)
    if not is_hf_dir(src):  # a run dir: name the row after the step it resolved to
        from tinyllama.hf import resolve_checkpoint

        row["model"] = resolve_checkpoint(src).name
    if out is not None:
        append_row(row, out)
    return row


def make_row(path: str | os.PathLike[str], tasks: Sequence[str], results: dict, tokens: int | None,
             limit: int | float | None = None) -> dict:
    """One checkpoint's row: {"model", "path", "tokens", "limit", "tasks": {task: {metric,
    value, stderr}}, "average"}; values in percent, as the model cards print them."""
    row: dict[str, Any] = {"model": Path(path).resolve().name, "path": str(path), "tokens": tokens,
                           "limit": limit, "tasks": {}}
    vals = []
    for t in tasks:
        m, v, err = task_metric(t, results.get(t, {}))
        pct = None if v is None else round(100 * v, 2)
        row["tasks"][t] = {"metric": m, "value": pct, "stderr": None if err is None else round(100 * err, 2)}
        if pct is not None:
            vals.append(pct)
    row["average"] = round(sum(vals) / len(vals), 2) if vals and len(vals) == len(tasks) else None
    return row


# ---- the published rows --------------------------------------------------------------------------


def published_rows(path: str | os.PathLike[str] = MODEL_CARDS) -> list[dict]:
    """The model cards' rows: {"model", "tokens", "source", "tasks": {task: value}, "average"}."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            vals = {t: float(rec[col]) for t, (col, _) in CARD_TASKS.items() if rec.get(col)}
            rows.append({"model": rec["model"], "tokens": parse_tokens(rec["tokens"]), "source": rec["source"],
                         "tasks": vals, "average": float(rec["avg"]) if rec.get("avg") else None})
    return rows


def parse_tokens(s: str) -> int | None:
    s = s.strip()
    if not s:
        return None
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
    if s[-1].upper() in mult:
        return int(round(float(s[:-1]) * mult[s[-1].upper()]))
    return int(s)


def compare(row: dict, published: Sequence[dict] | None = None, models: Sequence[str] | None = None) -> list[dict]:
    """Deltas (ours - published, in points) per published row, on the tasks both have; the
    average delta is over those common tasks (the published avg when all seven were run)."""
    published = published_rows() if published is None else published
    out = []
    for pub in published:
        if models is not None and pub["model"] not in models:
            continue
        deltas = {}
        for t, v in row["tasks"].items():
            if v["value"] is not None and t in pub["tasks"]:
                deltas[t] = round(v["value"] - pub["tasks"][t], 2)
        if not deltas:
            continue
        common = list(deltas)
        ours_avg = sum(row["tasks"][t]["value"] for t in common) / len(common)
        pub_avg = sum(pub["tasks"][t] for t in common) / len(common)
        out.append({"model": pub["model"], "tokens": pub["tokens"], "tasks": deltas,
                    "average": round(ours_avg - pub_avg, 2), "published_average": round(pub_avg, 2)})
    return out


# ---- output ----------------------------------------------------------------------------------


def _fmt_tokens(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, mult in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= mult:
            return f"{n / mult:.4g}{unit}"
    return str(n)


def format_table(row: dict, comparisons: Sequence[dict] = ()) -> str:
    """The model cards' table layout: our row, then each published row's delta."""
    tasks = list(row["tasks"])
    header = ["model", "tokens"] + [CARD_TASKS[t][0] if t in CARD_TASKS else t for t in tasks] + ["avg"]

    def v(x: float | None, sign: bool = False) -> str:
        return "-" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")

    cells = [[row["model"], _fmt_tokens(row["tokens"])] + [v(row["tasks"][t]["value"]) for t in tasks]
             + [v(row["average"])]]
    cells.append(["  metric", ""] + [row["tasks"][t]["metric"] for t in tasks] + [""])
    for c in comparisons:
        cells.append([f"  vs {c['model']}", _fmt_tokens(c["tokens"])]
                     + [v(c["tasks"].get(t), sign=True) for t in tasks] + [v(c["average"], sign=True)])
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    limit = f" (limit {row['limit']} per task)" if row.get("limit") else ""
    return "\n".join([f"lm-eval zero-shot{limit}; deltas are ours - published, in points", line(header),
                      line(["-" * w for w in widths])] + [line(r) for r in cells])


def flat_row(row: dict) -> dict:
    """A CSV row: model, path, tokens, limit, one column per task (its value), <task>_metric, avg."""
    flat: dict[str, Any] = {"model": row["model"], "path": row["path"], "tokens": row["tokens"], "limit": row["limit"]}
    for t, v in row["tasks"].items():
        flat[t] = v["value"]
        flat[f"{t}_metric"] = v["metric"]
    flat["avg"] = row["average"]
    return flat


def append_row(row: dict, out: str | os.PathLike[str]) -> Path:
    """Append to a .csv (header written once; columns must match) or a JSON-lines file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        flat = flat_row(row)
        exists = out.is_file() and out.stat().st_size > 0
        if exists:
            with open(out, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != list(flat):
                raise InputError(f"{out}: its columns {header} differ from this run's {list(flat)}")
        with open(out, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(flat))
            if not exists:
                w.writeheader()
            w.writerow({k: "" if x is None else x for k, x in flat.items()})
    else:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return out


def read_rows(path: str | os.PathLike[str]) -> list[dict]:
    """Rows written by `append_row` (.csv or JSON lines), in the `make_row` shape."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no results file")
    if path.suffix != ".csv":
        rows = []
        for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ln.strip():
                try:
                    rows.append(json.loads(ln))
                except ValueError as e:
                    raise InputError(f"{path}:{i}: not JSON: {e}") from None
        return rows
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            tasks = {k: {"metric": rec[f"{k}_metric"], "value": float(rec[k]) if rec[k] else None, "stderr": None}
                     for k in rec if f"{k}_metric" in rec}
            rows.append({"model": rec["model"], "path": rec["path"],
                         "tokens": int(rec["tokens"]) if rec["tokens"] else None,
                         "limit": rec["limit"] or None, "tasks": tasks,
                         "average": float(rec["avg"]) if rec["avg"] else None})
    return rows


def plot_series(rows: Sequence[dict], out_png: str | os.PathLike[str], published: Sequence[dict] | None = None) -> Path:
    """Accuracy (each task and the average) against tokens seen, one point per checkpoint row;
    the published rows with a token count are drawn as markers on the average's axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r for r in rows if r.get("tokens") is not None), key=lambda r: r["tokens"])
    if not pts:
        raise InputError("--plot: no row has a token count (rows from training checkpoints carry one)")
    tasks = list(dict.fromkeys(t for r in pts for t in r["tasks"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [r["tokens"] for r in pts]
    for t in tasks:
        ys = [r["tasks"].get(t, {}).get("value") for r in pts]
        ys = [math.nan if y is None else y for y in ys]
        ax.plot(xs, ys, marker="o", linewidth=1, label=CARD_TASKS[t][0] if t in CARD_TASKS else t)
    avg = [math.nan if r.get("average") is None else r["average"] for r in pts]
    ax.plot(xs, avg, marker="s", linewidth=2.5, color="black", label="avg")
    if published:
        pub = [p for p in published if p.get("tokens") and p.get("average") is not None]
        if pub:
            ax.scatter([p["tokens"] for p in pub], [p["average"] for p in pub], marker="*", s=80, color="gray",
                       label="published avg", zorder=3)
    ax.set_xscale("log" if max(xs) > 100 * max(1, min(xs)) else "linear")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def harness_main(
    paths: Sequence[str | os.PathLike[str]],
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    as_json: bool = False,
    compare_with: Sequence[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    echo=print,
    **kw: Any,
) -> list[dict]:
    """CLI entry: run each checkpoint, print its table (or JSON) with the published deltas,
    append rows to `out`, and plot the series. Returns the rows."""
    published = published_rows()
    rows = []
    for p in paths:
        row = run_harness(p, tasks, **kw)
        comps = compare(row, published, compare_with)
        rows.append(row)
        echo(json.dumps({**row, "published_delta": comps}, indent=2) if as_json else format_table(row, comps))
    if plot is not None:
        plot_series(rows, plot, published)
    return rows
