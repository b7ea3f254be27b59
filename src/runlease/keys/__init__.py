"""Key material: envelope encryption, the key file, and KEK wrapping by AWS KMS or Vault Transit."""
