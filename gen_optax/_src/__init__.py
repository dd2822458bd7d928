"""Implementation modules of gen_optax; import from `gen_optax` instead."""
