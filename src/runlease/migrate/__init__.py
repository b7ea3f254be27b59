"""Bring existing Airflow secrets into runlease (`runlease import`)."""
