"""`minitron run` on a tiny model: stages run in order, write summaries, and resume."""

import json
from pathlib import Path

from conftest import run_minitron, stage_summary


def test_run_writes_stage_summaries_and_skips_finished_stages(tiny_hf, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"# Run: minitron run --config tiny.yaml\nname: tiny\nmodel: {{source: {tiny_hf}}}\n")
    first = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert first.returncode == 0, first.stderr[-3000:]
    imported = stage_summary(tmp_path / "runs/tiny/import")
    assert imported["nemo"] == str(tmp_path / "runs/tiny/import/nemo")  # final path, not the temp one
    assert (tmp_path / "runs/tiny/import/nemo/weights/.metadata").is_file()
    verified = stage_summary(tmp_path / "runs/tiny/verify")
    assert verified["roundtrip_identical"] and verified["layouts"][0]["max_abs_logit_diff"] < 1e-4
    again = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert "[import] done already" in again.stdout and "[verify] done already" in again.stdout


def test_bad_model_source_fails_before_writing(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"name: bad\nmodel: {{source: {tmp_path / 'nowhere'}}}\n")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "has no config.json" in proc.stderr
    assert not (tmp_path / "runs/bad/import").exists()


def test_a_finished_run_moves_and_runs_from_anywhere(tiny_hf, tmp_path):
    """Paths inside a run folder are stored relative to it: a finished run copied elsewhere (file times not kept,
    the original gone) resumes, re-evaluates and reports from another working directory; a folder written
    before that (working-directory-relative paths) is still read; a partial folder
    that a killed attempt left behind is removed when its stage starts again."""
    import shutil

    from conftest import write_tiny_recipe, write_train_yaml

    train = write_train_yaml(tmp_path / "train.yaml", steps=2, interval=2)
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, distill, eval, report]",
                               "[{name: depth, num_layers: 2}]",
                               f"distill: {{config: {train}}}\neval: {{skip: [lm_eval, throughput], dtype: fp32, "
                               "perplexity: {max_tokens: 400}}\n")
    started = tmp_path / "started_here"
    (started / "runs/tiny/.prune-depth.partial-killed").mkdir(parents=True)  # what kill -9 leaves
    first = run_minitron("run", "--config", str(recipe), "--output", "runs", cwd=started)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (started / "runs/tiny/.prune-depth.partial-killed").exists()
    stored = json.loads((started / "runs/tiny/distill-depth/summary.json").read_text())
    assert stored["hf"] == "./distill-depth/hf" and stored["teacher"] == "./import/nemo"
    perplexity = stage_summary(started / "runs/tiny/eval")["models"]["depth-distilled"]["perplexity"]["perplexity"]

    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(started / "runs", moved, copy_function=shutil.copy)  # as `cp -r`: new file times
    shutil.rmtree(started)
    again = run_minitron("run", "--config", str(recipe), "--output", str(moved), cwd=Path("/"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[distill-depth] done already" in again.stdout
    evaluated = stage_summary(moved / "tiny/eval")["models"]
    assert evaluated["depth-distilled"]["hf"] == str(moved / "tiny/distill-depth/hf")
    assert evaluated["depth-distilled"]["perplexity"]["perplexity"] == perplexity  # re-measured, same number
    assert "| **depth-distilled** |" in (moved / "tiny/report/report.md").read_text()
    newest = run_minitron("model", "newest", "--config", str(recipe), "--output", str(moved), cwd=Path("/"))
    assert newest.stdout.strip() == str(moved / "tiny/distill-depth/hf")

    # An older run folder: paths relative to the directory it was started from.
    legacy = json.loads((moved / "tiny/distill-depth/summary.json").read_text())
    legacy.update(hf="runs/tiny/distill-depth/hf", nemo="runs/tiny/distill-depth/nemo")
    (moved / "tiny/distill-depth/summary.json").write_text(json.dumps(legacy))
    shutil.rmtree(moved / "tiny/eval.work")
    evaluated = run_minitron("eval", "--config", str(recipe), "--output", str(moved), cwd=Path("/"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    models = stage_summary(moved / "tiny/eval")["models"]
    assert models["depth-distilled"]["hf"] == str(moved / "tiny/distill-depth/hf")
