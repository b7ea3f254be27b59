"""Ready KFP components, one per module: the run's exit-handler revocation and its audit report."""

from runlease_kfp.components.revoke_run_leases import revoke_run_leases
from runlease_kfp.components.run_audit_report import run_audit_report

__all__ = ["revoke_run_leases", "run_audit_report"]
