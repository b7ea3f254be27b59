"""Modules the UI tests' API server imports (put on its PYTHONPATH by tests/airflow/test_ui.py)."""
