"""Least privilege: the policy file's grants, and their rendering to Vault HCL and IAM documents."""
