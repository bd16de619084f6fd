"""`minitron run` on a tiny model: stages run in order, write summaries, and resume."""

import json

from conftest import run_minitron


def test_run_writes_stage_summaries_and_skips_finished_stages(tiny_hf, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"# Run: minitron run --config tiny.yaml\nname: tiny\nmodel: {{source: {tiny_hf}}}\n")
    first = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert first.returncode == 0, first.stderr[-3000:]
    imported = json.loads((tmp_path / "runs/tiny/import/summary.json").read_text())
    assert imported["nemo"] == str(tmp_path / "runs/tiny/import/nemo")  # final path, not the temp one
    assert (tmp_path / "runs/tiny/import/nemo/weights/.metadata").is_file()
    verified = json.loads((tmp_path / "runs/tiny/verify/summary.json").read_text())
    assert verified["roundtrip_identical"] and verified["layouts"][0]["max_abs_logit_diff"] < 1e-4
    again = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert "[import] done already" in again.stdout and "[verify] done already" in again.stdout


def test_bad_model_source_fails_before_writing(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"name: bad\nmodel: {{source: {tmp_path / 'nowhere'}}}\n")
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "has no config.json" in proc.stderr
    assert not (tmp_path / "runs/bad/import").exists()
