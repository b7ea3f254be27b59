"""Benchmark: ``runlease scan`` against detect-secrets on the same generated tree.

Generates (deterministically, from a seed) a tree of N Python files (default
10,000, ~50 MB) that look like Airflow DAGs and KFP pipelines, with the labeled
corpus from ``tests/scan/scan_corpus.py`` planted in it, then in the same run:

* times ``python -m runlease.scan --all-files --format json`` with 1 and with
  ``--jobs 2`` worker processes, and ``detect-secrets scan --all-files`` with
  ``--cores 1`` and with its default (one process per CPU; detect-secrets 1.x
  uses a multiprocessing pool) -- so each speedup compares equal process counts;
* measures recall of both tools on the labeled corpus (a planted credential
  counts as found when the tool reports any finding on its line).

Usage::

    python benchmarks/bench_scan.py [--files 10000] [--megabytes 50] \
        [--markdown docs/benchmarks.md]

``--markdown`` rewrites only the section between ``<!-- bench:scan:start -->``
and ``<!-- bench:scan:end -->`` and leaves the rest of the file alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchdoc  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:scan:start -->", "<!-- bench:scan:end -->"


def _load_corpus_module():
    """The tests' corpus generator, loaded by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("scan_corpus", ROOT / "tests" / "scan" / "scan_corpus.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["scan_corpus"] = module
    spec.loader.exec_module(module)
    return module


# --- realistic filler -------------------------------------------------------

_OPERATORS = [
    ("BashOperator", 'bash_command="python -m etl.{name} --date {{{{ ds }}}}"'),
    ("PythonOperator", "python_callable=_{name}"),
    ("SQLExecuteQueryOperator", 'conn_id="warehouse", sql="sql/{name}.sql"'),
    ("HttpOperator", 'http_conn_id="partner_api", endpoint="/v2/{name}", method="GET"'),
    ("S3ToRedshiftOperator", 's3_bucket="raw-events", s3_key="{name}/", schema="staging", table="{name}"'),
]
_WORDS = (
    "orders customers events sessions invoices payments clicks features labels embeddings metrics "
    "inventory shipments returns churn forecast ranking scores users accounts ledger audit"
).split()


def _sql(rng: random.Random) -> str:
    a, b = rng.sample(_WORDS, 2)
    return (
        f'    """\n    SELECT {a}.id, {a}.created_at, count(*) AS n_{b}\n    FROM staging.{a}\n'
        f"    JOIN staging.{b} ON {b}.{a}_id = {a}.id\n    WHERE {a}.created_at >= '{{{{ ds }}}}'\n"
        f"    GROUP BY 1, 2\n    \"\"\""
    )


def _dag_file(rng: random.Random, index: int, target: int) -> str:
    name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{index}"
    out = [
        f'"""{name}: daily load of {rng.choice(_WORDS)} into the warehouse.\n\n'
        "Owned by the data platform team. See https://wiki.internal/data/dags for conventions.\n\"\"\"",
        "from __future__ import annotations\n\nimport logging\nfrom datetime import timedelta\n",
        "import pendulum\nfrom airflow.sdk import DAG, Variable, task\n"
        "from airflow.providers.standard.operators.bash import BashOperator\n"
        "from airflow.providers.standard.operators.python import PythonOperator\n",
        "log = logging.getLogger(__name__)\n",
        'default_args = {\n    "owner": "data-platform",\n    "retries": 2,\n'
        '    "retry_delay": timedelta(minutes=5),\n    "email_on_failure": False,\n}\n',
    ]
    if rng.random() < 0.3:
        out.append('API_BASE = "https://api.partner.example/v2"\nPARTNER_KEY_VAR = "partner_api_key"\n')
    if rng.random() < 0.2:
        out.append('def _auth_headers() -> dict[str, str]:\n    token = Variable.get("partner_api_token")\n'
                   '    return {"Authorization": f"Bearer {token}"}\n')
    step = 0
    body: list[str] = []
    while sum(len(x) + 1 for x in out) + sum(len(x) + 1 for x in body) < target - 400:
        step += 1
        word = rng.choice(_WORDS)
        kind = rng.random()
        if kind < 0.35:
            out.append(
                f"def _{word}_{step}(**context) -> int:\n"
                f'    """Transform {word} for the run\'s data interval."""\n'
                f'    rows = context["ti"].xcom_pull(task_ids="extract_{word}") or []\n'
                f"    kept = [r for r in rows if r.get(\"{word}_id\") is not None]\n"
                f'    log.info("kept %d of %d {word} rows", len(kept), len(rows))\n'
                "    return len(kept)\n"
            )
        elif kind < 0.55:
            out.append(f"{word.upper()}_{step}_SQL = (\n{_sql(rng)}\n)\n")
        else:
            op, args = rng.choice(_OPERATORS)
            body.append(f"    {word}_{step} = {op}(\n        task_id=\"{word}_{step}\",\n        "
                        + args.format(name=f"{word}_{step}") + ",\n    )")
    out.append(
        f'with DAG(\n    dag_id="{name}",\n    schedule="@daily",\n    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),\n'
        f'    catchup=False,\n    default_args=default_args,\n    tags=["{rng.choice(_WORDS)}"],\n) as dag:'
    )
    out.extend(body or ["    pass"])
    return "\n".join(out) + "\n"


def _pipeline_file(rng: random.Random, index: int, target: int) -> str:
    out = [
        f'"""KFP v2 pipeline #{index}: feature build and training."""\n',
        "from kfp import compiler, dsl, kubernetes\n",
    ]
    comps = []
    while sum(len(x) + 1 for x in out) < target - 600:
        word = rng.choice(_WORDS)
        fn = f"{word}_{len(comps)}"
        comps.append(fn)
        out.append(
            f'@dsl.component(base_image="python:3.11", packages_to_install=["pandas"])\n'
            f"def {fn}(input_path: str, epochs: int = {rng.randint(1, 20)}, lr: float = {rng.random():.4f}) -> str:\n"
            f'    """Compute {word} features from input_path."""\n'
            "    import pandas as pd\n\n"
            "    frame = pd.read_parquet(input_path)\n"
            f'    frame["{word}_norm"] = frame["{word}"] / frame["{word}"].max()\n'
            f'    out = input_path.replace(".parquet", "_{word}.parquet")\n'
            "    frame.to_parquet(out)\n    return out\n"
        )
    out.append(f'@dsl.pipeline(name="pipeline-{index}")\ndef pipeline(input_path: str = "gs://bucket/data.parquet"):')
    prev = "input_path"
    for fn in comps:
        out.append(f"    {fn}_task = {fn}(input_path={prev})")
        prev = f"{fn}_task.output"
    if comps:
        out.append(
            f"    kubernetes.use_secret_as_env({comps[0]}_task, secret_name=\"wandb\", "
            'secret_key_to_env={"api_key": "WANDB_API_KEY"})'
        )
    out.append('\n\nif __name__ == "__main__":\n    compiler.Compiler().compile(pipeline, "pipeline.yaml")')
    return "\n".join(out) + "\n"


def generate_tree(root: Path, files: int, megabytes: float, seed: int):
    """Write the tree; return (labels, corpus_root) for the planted corpus."""
    corpus = _load_corpus_module()
    if root.exists():
        shutil.rmtree(root)
    corpus_root = root / "planted"
    labels = corpus.generate_corpus(corpus_root, seed=seed, copies=4)
    planted_files = sum(1 for p in corpus_root.rglob("*") if p.is_file())
    rng = random.Random(seed)
    avg = int(megabytes * 1e6 / files)
    for i in range(files - planted_files):
        target = max(800, int(rng.gauss(avg, avg * 0.35)))
        text = _pipeline_file(rng, i, target) if rng.random() < 0.25 else _dag_file(rng, i, target)
        path = root / f"team{i % 20:02d}" / ("pipelines" if "kfp" in text[:200] else "dags") / f"f{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    # Make the tree its own git repository with everything staged, as a pre-commit run
    # sees it: the planted .env files are then "tracked", which the dotenv-file rule
    # is about (the work directory itself sits in this repository's ignored .work/).
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return labels, corpus_root


# --- runs ---------------------------------------------------------------------

def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and all its workers, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, cpu, proc.stdout


def _runlease_cmd(jobs: int) -> list[str]:
    return [sys.executable, "-m", "runlease.scan", "--all-files", "--format", "json", "--jobs", str(jobs), "."]


def _detect_secrets_cmd(cores: int | None) -> list[str]:
    exe = shutil.which("detect-secrets", path=str(Path(sys.executable).parent)) or "detect-secrets"
    cmd = [exe]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    return [*cmd, "scan", "--all-files", "."]


def _runlease_lines(stdout: str) -> set[tuple[str, int]]:
    return {(f["path"], f["line"]) for f in json.loads(stdout)["findings"]}


def _runlease_rules(stdout: str) -> set[tuple[str, int, str]]:
    return {(f["path"], f["line"], f["rule_id"]) for f in json.loads(stdout)["findings"]}


def _detect_secrets_lines(stdout: str) -> set[tuple[str, int]]:
    results = json.loads(stdout)["results"]
    return {(path.removeprefix("./"), s["line_number"]) for path, items in results.items() for s in items}


def _recall(labels, found: set[tuple[str, int]], prefix: str = "") -> float:
    hit = sum(1 for p in labels if (prefix + p.path, p.line) in found)
    return hit / len(labels)




def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir).resolve()
    tree = work / "tree"
    t0 = time.perf_counter()
    labels, _corpus_root = generate_tree(tree, args.files, args.megabytes, args.seed)
    gen_s = time.perf_counter() - t0
    py_files = [p for p in tree.rglob("*") if p.is_file() and ".git" not in p.relative_to(tree).parts]
    total_bytes = sum(p.stat().st_size for p in py_files)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    outputs: dict[str, str] = {}
    loads: list[float] = []
    for label, cmd in (
        ("runlease_j1", _runlease_cmd(1)),
        ("runlease_j2", _runlease_cmd(2)),
        ("detect_secrets_c1", _detect_secrets_cmd(1)),
        ("detect_secrets_default", _detect_secrets_cmd(None)),
    ):
        print(f"running {label} ...", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
        timings[label], cpu[label], outputs[label] = _timed(cmd, tree, env)
    loads.append(os.getloadavg()[0])

    recall_rl = _recall(labels, _runlease_lines(outputs["runlease_j1"]), "planted/")
    rules_rl = _runlease_rules(outputs["runlease_j1"])
    recall_rl_rule = sum(1 for p in labels if ("planted/" + p.path, p.line, p.rule_id) in rules_rl) / len(labels)
    recall_ds = _recall(labels, _detect_secrets_lines(outputs["detect_secrets_default"]), "planted/")
    all_rl = _runlease_rules(outputs["runlease_j1"])
    extra_rl = sorted(x for x in all_rl if not x[0].startswith("planted/"))
    all_ds = _detect_secrets_lines(outputs["detect_secrets_default"])
    extra_ds = sorted(x for x in all_ds if not x[0].startswith("planted/"))
    ds_types: dict[str, int] = {}
    for path, items in json.loads(outputs["detect_secrets_default"])["results"].items():
        if not path.removeprefix("./").startswith("planted/"):
            for item in items:
                ds_types[item["type"]] = ds_types.get(item["type"], 0) + 1

    def rate(label: str) -> dict[str, float]:
        seconds = timings[label]
        return {
            "seconds": seconds,
            "cpu_seconds": cpu[label],
            "files_per_s": len(py_files) / seconds,
            "mb_per_s": total_bytes / 1e6 / seconds,
            "mb_per_cpu_s": total_bytes / 1e6 / cpu[label],
        }

    return {
        "files": len(py_files),
        "megabytes": total_bytes / 1e6,
        "generate_seconds": gen_s,
        "labels": len(labels),
        "runs": {k: rate(k) for k in timings},
        "speedup_1_process": timings["detect_secrets_c1"] / timings["runlease_j1"],
        "speedup_2_processes": timings["detect_secrets_default"] / timings["runlease_j2"],
        "cpu_ratio": cpu["detect_secrets_c1"] / cpu["runlease_j1"],
        "load_average_1min": loads,
        "recall_runlease": recall_rl,
        "recall_runlease_right_rule": recall_rl_rule,
        "recall_detect_secrets": recall_ds,
        "findings_outside_corpus_runlease": len(extra_rl),
        "findings_outside_corpus_detect_secrets": len(extra_ds),
        "findings_outside_corpus_detect_secrets_by_type": ds_types,
        "machine": {
            "cpu": benchdoc.cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "runlease": _runlease_version(),
            "detect-secrets": _version("detect-secrets"),
            "ahocorasick-rs": _version("ahocorasick-rs"),
        },
        "command": "python benchmarks/bench_scan.py " + " ".join(args.argv),
    }


def _runlease_version() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from runlease import __version__

    return __version__


def to_markdown(r: dict) -> str:
    runs = r["runs"]
    ok_speed = min(r["speedup_1_process"], r["speedup_2_processes"]) >= 5
    ok_recall = r["recall_runlease"] >= r["recall_detect_secrets"]
    rows = [
        ("runlease scan, 1 process (`--jobs 1`)", runs["runlease_j1"]),
        ("runlease scan, 2 processes (`--jobs 2`)", runs["runlease_j2"]),
        ("detect-secrets scan, 1 process (`--cores 1`)", runs["detect_secrets_c1"]),
        ("detect-secrets scan, default (pool of 2 = CPU count)", runs["detect_secrets_default"]),
    ]
    table = "\n".join(
        f"| {name} | {v['seconds']:.2f} | {v['files_per_s']:.0f} | {v['mb_per_s']:.2f} | {v['cpu_seconds']:.2f} |"
        for name, v in rows
    )
    loads = ", ".join(f"{x:.1f}" for x in r["load_average_1min"])
    ds_types = ", ".join(
        f"{n} {kind}" for kind, n in sorted(r["findings_outside_corpus_detect_secrets_by_type"].items())
    ) or "none"
    m = r["machine"]
    v = r["versions"]
    return f"""{START}
## Secret scanning: `runlease scan` vs detect-secrets

Tree: {r['files']:,} files, {r['megabytes']:.1f} MB: generated Python files (Airflow DAGs and KFP
pipelines) plus the labeled test corpus ({r['labels']} planted credentials in DAGs, pipelines,
notebooks-as-.py, YAML, JSON, .env and .env.example files) planted under `planted/`.
The tree is a fresh git repository with every file staged (as pre-commit sees it).
Both tools scan the same tree in the same run, as subprocesses started from the tree's
root with `--all-files` (wall time includes interpreter start-up and JSON output).
detect-secrets runs with all its default plugins and filters.

Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} ({m['platform']}).
Versions: runlease {v['runlease']}, detect-secrets {v['detect-secrets']}, ahocorasick-rs {v['ahocorasick-rs']}.

Command: `{r['command']}`

| run | wall seconds | files/s | MB/s | CPU seconds (incl. workers) |
| --- | ---: | ---: | ---: | ---: |
{table}

1-minute load average before each run and at the end: {loads} (this machine is shared;
wall times move with load, CPU seconds much less).

- Speedup in wall time at equal process count: **{r['speedup_1_process']:.1f}x** with 1 process,
  **{r['speedup_2_processes']:.1f}x** with 2 processes; detect-secrets needs
  {r['cpu_ratio']:.1f}x runlease's CPU time (1 process each). Target >= 5x:
  **{'met' if ok_speed else 'NOT met'}** (judged on the wall-time speedups).
- Recall on the labeled corpus (a planted credential counts as found when the tool reports
  anything on its line): runlease **{r['recall_runlease']:.1%}**
  ({r['recall_runlease_right_rule']:.1%} with the expected rule id), detect-secrets
  **{r['recall_detect_secrets']:.1%}**. Target runlease >= detect-secrets: **{'met' if ok_recall else 'NOT met'}**.
- Findings outside the planted corpus (the filler has no credentials, so these are false
  positives): runlease {r['findings_outside_corpus_runlease']}, detect-secrets
  {r['findings_outside_corpus_detect_secrets']} lines ({ds_types}). The generated pipelines use the
  correct KFP pattern `kubernetes.use_secret_as_env(..., secret_key_to_env={{"api_key": "WANDB_API_KEY"}})`,
  which detect-secrets' keyword plugin reports; runlease treats the env-variable name as a reference.
- Note: detect-secrets 1.x is not single-process: `scan` uses a multiprocessing pool with
  one worker per CPU unless `--cores` is given, so both tools are compared at 1 and at 2 processes.
{END}"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "scan"))
    parser.add_argument("--markdown", type=Path, default=None, help="update this file's bench:scan section")
    args = parser.parse_args(argv)
    args.argv = argv
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.markdown is not None:
        benchdoc.write_section(args.markdown, START, END, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
