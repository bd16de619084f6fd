"""Pipeline stages, one module per stage, named after it (`import` is `import_.py`: a keyword).

Each module has ``run(folder: RunFolder, stage: str, out: Path) -> dict``: it writes into `out` (a
temporary folder renamed into place when the stage succeeds) and returns the stage's summary.
`stage` is the folder name (``prune-width`` for the `prune` stage of student ``width``).
"""

from minitron.stages import distill, eval, import_, prune, report, teacher_correction, verify

#: Stage kind (as a recipe's `stages` lists it) -> its runner.
STAGES = {"import": import_.run, "verify": verify.run, "teacher_correction": teacher_correction.run,
          "prune": prune.run, "distill": distill.run, "eval": eval.run, "report": report.run}
