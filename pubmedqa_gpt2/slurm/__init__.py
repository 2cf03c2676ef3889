"""Sweeps of DVC experiments as SLURM job arrays (docs/CLUSTER.md)."""
