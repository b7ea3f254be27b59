#!/usr/bin/env bash
# The 60-second tour on the embedded default store, in a throwaway home.
# Run through `make demo` (which bootstraps .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RL="$VENV/bin/runlease"
PY="$VENV/bin/python"
export COLUMNS=${COLUMNS:-150}

demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/runlease-demo.XXXXXX")
trap 'rm -rf "$demo_dir"' EXIT
export RUNLEASE_HOME="$demo_dir/home"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. init: key file (0600), encrypted store, example policy in a temporary RUNLEASE_HOME"
"$RL" init

step "2. store a connection; the value comes from stdin, never from argv"
password=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')
printf 'postgres://etl:%s@warehouse.internal:5432/analytics?sslmode=require' "$password" \
  | "$RL" put dev/connections/warehouse --stdin
"$RL" ls

step "3. lease it for a (made-up) Airflow run: bound to dag, run, task and try"
"$RL" lease dev/connections/warehouse --ttl 600 --orchestrator airflow --pipeline training_pipeline \
  --run-id scheduled__2026-11-22T00:00:00 --task-id load_features --try-number 1

step "4. the value stays masked: get shows ***, and a task log line passes through the redactor"
"$RL" get dev/connections/warehouse
"$PY" - <<'PYEOF'
import logging, sys
from runlease.models import RunIdentity
from runlease.redact import RedactingFilter
from runlease.runtime import open_runtime

rt = open_runtime()
who = RunIdentity(orchestrator="airflow", pipeline="training_pipeline",
                  run_id="scheduled__2026-11-22T00:00:00", task_id="train_model", try_number=1)
lease = rt.broker.lease("warehouse", who, ttl=600)
handler = logging.StreamHandler(sys.stdout)
handler.addFilter(RedactingFilter(rt.broker.redactor))
handler.setFormatter(logging.Formatter("[task log] %(message)s"))
log = logging.getLogger("train_model")
log.addHandler(handler)
log.propagate = False
log.warning("connecting with password=%s", lease.value["password"])
log.warning("dsn=postgresql://etl:%s@warehouse.internal/analytics", lease.value["password"])
rt.close()
PYEOF

step "5. the run ends: revoke every lease it still holds"
"$RL" revoke --run-id scheduled__2026-11-22T00:00:00 --reason "dag run finished"
"$RL" leases --run-id scheduled__2026-11-22T00:00:00

step "6. the run's audit trail (who, what, which version, which lease, never a value)"
"$RL" audit show --run-id scheduled__2026-11-22T00:00:00

step "7. verify the hash chain"
"$RL" audit verify

step "8. tamper with a copy of the store: verify names the first bad event"
cp -r "$RUNLEASE_HOME" "$demo_dir/tampered"
"$PY" -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET task_id='someone_else' WHERE seq=3\"); c.commit()" \
  "$demo_dir/tampered/store.db"
RUNLEASE_HOME="$demo_dir/tampered" "$RL" audit verify && { echo "tampering went unnoticed" >&2; exit 1; } || true

step "9. and the plaintext never touched the disk"
if grep -a -r -F -q -- "$password" "$RUNLEASE_HOME"; then echo "plaintext found at rest" >&2; exit 1; fi
echo "no occurrence of the password in $(ls "$RUNLEASE_HOME" | tr '\n' ' ')"
step "10. Airflow: run dags_examples/training_pipeline.py for real (dag.test, SQLite metadata DB)"
export AIRFLOW_HOME="$demo_dir/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$demo_dir/airflow/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__SECRETS__BACKEND=runlease_airflow.secrets.RunleaseBackend
export AIRFLOW__SECRETS__BACKEND_KWARGS='{"env": "dev", "ttl": 900}'
mkdir -p "$AIRFLOW__CORE__DAGS_FOLDER"
cp dags_examples/training_pipeline.py "$AIRFLOW__CORE__DAGS_FOLDER/"
registry_password=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')
printf 'https://publisher:%s@registry.internal:443/models' "$registry_password" \
  | "$RL" put dev/connections/model_registry --stdin
"$PY" -c 'import secrets; print(secrets.token_urlsafe(24), end="")' | "$RL" put dev/variables/feature_store_token --stdin
echo "airflow db migrate ..."
"$VENV/bin/airflow" db migrate > "$demo_dir/airflow-migrate.log" 2>&1 || { tail -20 "$demo_dir/airflow-migrate.log"; exit 1; }
run_id=$("$PY" scripts/demo_airflow_run.py 2> "$demo_dir/airflow-run.log") || { tail -40 "$demo_dir/airflow-run.log"; exit 1; }
grep -oE "runlease: revoked [0-9]+ lease\(s\) of [^ ]+ try [0-9]+ \([a-z_]+\)" "$demo_dir/airflow-run.log"
grep -E "^dag run " "$demo_dir/airflow-run.log"

step "11. the Airflow run's leases: one per task try and secret, each revoked when its task ended"
"$RL" leases --run-id "$run_id"

step "12. the Airflow run's audit trail: render-time and execute-time leases, revocations"
"$RL" audit show --run-id "$run_id"
"$RL" audit verify
if grep -a -r -F -q -- "$password" "$AIRFLOW_HOME" "$RUNLEASE_HOME"; then echo "password found on disk" >&2; exit 1; fi
echo "no occurrence of the warehouse password under AIRFLOW_HOME or RUNLEASE_HOME"

# ==== KFP (runlease_kfp): the example pipeline with kfp.local on the same RUNLEASE_HOME ====
# Each step leases its own credential inside the component; the component
# subprocesses inherit RUNLEASE_HOME / RUNLEASE_MASTER_KEY from this shell
# (on a cluster they come from the Kubernetes Secret the pipeline mounts).
step "13. KFP: store what the example pipeline's steps lease (values from stdin)"
tracker_token=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
printf '%s' "$tracker_token" | "$RL" put dev/tokens/experiment_tracker --stdin

step "14. KFP: run dags_examples/kfp_training_pipeline.py with kfp.local (fetch data -> train -> publish)"
kfp_log="$demo_dir/kfp-run.log"
if ! "$PY" dags_examples/kfp_training_pipeline.py run-local --pipeline-root "$demo_dir/kfp-root" >"$kfp_log" 2>&1; then
  cat "$kfp_log" >&2; echo "KFP run failed" >&2; exit 1
fi
grep -E "runlease: (leased|revoked)|^ *(fetched|trained|published) |Pipeline .* finished" "$kfp_log" | sed 's/^ *//'
kfp_run_id=$(sed -n 's/^KFP run id: //p' "$kfp_log")
printf '\n\033[1mKFP run id: %s\033[0m\n' "$kfp_run_id"

step "15. KFP: the run's audit trail (every step's lease, same run id, all revoked) and the chain"
"$RL" audit show --run-id "$kfp_run_id"
echo "leases of run $kfp_run_id still active (none expected):"
"$RL" leases --run-id "$kfp_run_id" --state active
"$RL" audit verify

step "16. KFP: the run's report artifact, and no leased value in its logs or pipeline root"
sed -n '1,4p' "$demo_dir"/kfp-root/kfp-training-pipeline-*/run-audit-report/markdown
for value in "$password" "$tracker_token" "$registry_password"; do
  if grep -a -r -F -q -- "$value" "$kfp_log" "$demo_dir/kfp-root"; then echo "a leased value leaked into the KFP run" >&2; exit 1; fi
done
echo "no leased value in $(find "$demo_dir/kfp-root" -type f | wc -l) files under the pipeline root or in the run's log"
# ==== end of KFP part ====

step "17. both runs side by side: one audit trail, one chain, two orchestrators"
"$PY" scripts/demo_side_by_side.py "$run_id" "$kfp_run_id"

echo
echo "demo OK"
