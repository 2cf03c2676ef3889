"""The GPU check: the whole pipeline at full size on a lent GPU machine, in one call, and the kit
it needs there (docs/PERFORMANCE.md, "The one-call GPU check").

    make gpu-kit                                          # kit.py: wheels, data, tokenizer
    bash gpu_check/run.sh OUTDIR --results "$OUT"         # check.py: install, stages, bench.gpu

check.py runs the steps; pipeline.py reads dvc.yaml and makes the scratch copy; plan.py says
what each step should take; record.py writes what happened, killed or not; provenance.py and
environment.py say what ran.
"""
