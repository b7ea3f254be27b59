"""A Kubeflow pipeline where every step leases what it needs: fetch data -> train -> publish.

No step receives a credential as a parameter (KFP parameters are public:
pod spec, UI, ML Metadata). Each one leases its own, for this run, inside
the component, and gives it back when its ``with`` block ends;
``runlease_kfp.leased_run`` adds the exit-handler revocation and the audit
report and wires the run identity and the server URL and workload token.

Secrets the run leases (put them first, e.g. ``runlease put ... --stdin``):

* ``<env>/connections/warehouse``: the data source (fetch_data)
* ``<env>/tokens/experiment_tracker``: the metrics sink (train_model)
* ``<env>/connections/model_registry``: where models are published (publish_model)

The steps use each credential the way a client library would (connection
fields, a bearer header) but talk to no external system, so the pipeline
runs anywhere; comments mark where a real step makes its call.

Usage::

    python dags_examples/kfp_training_pipeline.py compile pipeline.yaml
    python dags_examples/kfp_training_pipeline.py run-local --pipeline-root ./kfp-outputs

``run-local`` runs it with kfp.local (``SubprocessRunner(use_venv=False)``):
the component subprocesses inherit this process's environment, so they use
``runlease serve`` when ``RUNLEASE_SERVER`` and ``RUNLEASE_TOKEN_FILE`` are set
(no key or home in their environment), else the store in ``$RUNLEASE_HOME``.
On a cluster the tasks get the server URL (``RUNLEASE_KFP_SERVER_URL`` at
compile time) and a projected service-account token, and
``RUNLEASE_KFP_IMAGE`` names an image with ``runlease[kfp]`` installed
(docs/kfp.md, docs/server.md).
"""

import argparse
import os
import sys
from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

import runlease_kfp
from runlease_kfp.images import component_image

PIPELINE_NAME = "kfp-training-pipeline"
#: On a cluster the components reach `runlease serve` with their projected service-account
#: token and hold no key (docs/server.md). RUNLEASE_KFP_SERVER_URL is read at compile time.
SERVER_URL = os.environ.get("RUNLEASE_KFP_SERVER_URL", "https://runlease.runlease.svc.cluster.local:8443")
STORE_ACCESS = runlease_kfp.StoreAccess.server(SERVER_URL)


@dsl.component(base_image=component_image(), install_kfp_package=False)
def fetch_data(
    environment: str,
    source_table: str,
    dataset: Output[Dataset],
    runlease_run_id: str = "",
    runlease_pipeline: str = "",
    runlease_task: str = "",
):
    """Read training rows from the warehouse with a connection leased for this run."""
    import csv
    import random

    import runlease_kfp

    with runlease_kfp.lease(f"{environment}/connections/warehouse", ttl=900) as conn:
        # A real step connects here, e.g. psycopg.connect(host=conn["host"], port=conn["port"],
        # user=conn["login"], password=conn["password"], dbname=conn["schema"]) and runs the query.
        # Only non-secret coordinates leave the block.
        source = f"{conn['conn_type']}://{conn['host']}:{conn['port']}/{conn['schema']}.{source_table}"
        rng = random.Random(source_table)
        rows = [(x, 3.0 * x + 2.0 + rng.uniform(-0.5, 0.5)) for x in (rng.uniform(0, 10) for _ in range(200))]
    with open(dataset.path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y"])
        writer.writerows(rows)
    dataset.metadata.update({"source": source, "rows": len(rows)})
    print(f"fetched {len(rows)} rows from {source}")


@dsl.component(base_image=component_image(), install_kfp_package=False)
def train_model(
    environment: str,
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    runlease_run_id: str = "",
    runlease_pipeline: str = "",
    runlease_task: str = "",
):
    """Fit y = a*x + b by least squares; report metrics to the tracker with a leased token."""
    import csv
    import json

    import runlease_kfp

    with open(dataset.path, newline="") as handle:
        points = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)]
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    intercept = mean_y - slope * mean_x
    mse = sum((y - (slope * x + intercept)) ** 2 for x, y in points) / n
    with open(model.path, "w") as handle:
        json.dump({"slope": slope, "intercept": intercept}, handle)

    with runlease_kfp.lease(f"{environment}/tokens/experiment_tracker", kind="tokens", ttl=300) as token:
        headers = {"Authorization": f"Bearer {token}"}
        # A real step posts here: requests.post(tracker_url, json={"mse": mse}, headers=headers).
        assert headers["Authorization"].startswith("Bearer ")
        metrics.log_metric("mse", mse)
        metrics.log_metric("rows", n)
    model.metadata.update({"framework": "least-squares", "mse": mse})
    print(f"trained on {n} rows: slope={slope:.3f} intercept={intercept:.3f} mse={mse:.4f}")


@dsl.component(base_image=component_image(), install_kfp_package=False)
def publish_model(
    environment: str,
    model: Input[Model],
    published: Output[Model],
    runlease_run_id: str = "",
    runlease_pipeline: str = "",
    runlease_task: str = "",
):
    """Publish the model to the registry with a connection leased for this run."""
    import hashlib
    import shutil

    import runlease_kfp

    digest = hashlib.sha256(open(model.path, "rb").read()).hexdigest()[:16]
    with runlease_kfp.lease(f"{environment}/connections/model_registry", ttl=300) as registry:
        # A real step uploads here, authenticated as registry["login"] with registry["password"].
        target = f"{registry['host']}/models/{runlease_pipeline}/{digest}"
        shutil.copyfile(model.path, published.path)
    published.metadata.update({"registry_uri": target, "digest": digest})
    print(f"published model {digest} to {target}")


@dsl.pipeline(name=PIPELINE_NAME, description="fetch data -> train -> publish, each step leasing its own credential")
def training_pipeline(environment: str = "dev", source_table: str = "features"):
    with runlease_kfp.leased_run(store=STORE_ACCESS):
        data = fetch_data(environment=environment, source_table=source_table)
        model = train_model(environment=environment, dataset=data.outputs["dataset"])
        publish_model(environment=environment, model=model.outputs["model"])


def compile_pipeline(path: str | Path) -> Path:
    """Compile to KFP IR YAML (pipeline spec plus the kubernetes platform spec)."""
    compiler.Compiler().compile(training_pipeline, str(path))
    return Path(path)


def run_local(pipeline_root: str | Path, environment: str = "dev") -> str:
    """Run the pipeline with kfp.local in subprocesses of this interpreter; return the KFP run id."""
    from kfp import local

    from runlease_kfp.local_run import audit_position, run_ids_since

    before = audit_position()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    training_pipeline(environment=environment)
    run_ids = run_ids_since(before, PIPELINE_NAME)
    if len(run_ids) != 1:
        raise RuntimeError(f"expected the leases of one local run of {PIPELINE_NAME}, found runs {run_ids}")
    return run_ids[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="compile to YAML")
    comp.add_argument("output")
    run = sub.add_parser("run-local", help="run with kfp.local against RUNLEASE_SERVER or $RUNLEASE_HOME")
    run.add_argument("--pipeline-root", default="./kfp-local-outputs")
    run.add_argument("--environment", default="dev")
    args = parser.parse_args(argv)
    if args.command == "compile":
        print(f"compiled {compile_pipeline(args.output)}")
        return 0
    run_id = run_local(args.pipeline_root, args.environment)
    print(f"KFP run id: {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
