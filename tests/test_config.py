import pytest

from minitron import config
from minitron.errors import MinitronError
from minitron.recipe import Recipe


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "name: x\nstages: [import, prune_it]\nparalel: {tensor_parallel: 2}\n"
                           "parallel: {tensor_parallel: two}\nverify: {logits_atol: 1e-4, layout: []}\n")
    with pytest.raises(MinitronError) as e:
        config.load(Recipe, path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "unknown key 'paralel' (did you mean 'parallel'?)" in msg
    assert "parallel.tensor_parallel='two' must be int" in msg
    assert "unknown key 'verify.layout' (did you mean 'layouts'?)" in msg


def test_overrides_are_typed_and_nested(tmp_path):
    path = write(tmp_path, "name: x\n")
    recipe = config.load(Recipe, path, ["parallel.pipeline_parallel=2", "verify.logits_atol=1e-3",
                                        "verify.layouts=[[1, 2]]", "stages=[import]"])
    assert recipe.parallel.pipeline_parallel == 2 and recipe.verify.logits_atol == 1e-3
    assert recipe.verify.layouts == [[1, 2]] and recipe.stages == ["import"]


@pytest.mark.parametrize("override, message", [
    ("parallel.tensor_parallel=0", "must be >= 1"),
    ("stages=[import, distil]", "unknown stage"),
    ("nonsense", "not key=value"),
    ("model.sorce=x", "did you mean 'source'"),
    ("verify.layouts=[[2]]", "[TP, PP]"),
])
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(MinitronError, match=message.replace("[", r"\[")):
        config.load(Recipe, write(tmp_path, "name: x\n"), [override])


def test_required_key(tmp_path):
    with pytest.raises(MinitronError, match="missing required key 'name'"):
        config.load(Recipe, write(tmp_path, "stages: [import]\n"))


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(MinitronError, match="invalid YAML"):
        config.load(Recipe, write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n"))


def test_every_field_is_documented():
    lines = config.describe(Recipe)
    assert lines and all(": " in ln and not ln.split(": ", 1)[1].startswith("(default") for ln in lines)


def test_recipes_in_repo_are_valid():
    from conftest import REPO

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert path.read_text().startswith("# Run: "), f"{path.name} must open with the command to run it"
        config.load(Recipe, path)


def test_every_config_key_is_documented_in_one_sentence():
    """`minitron config --explain` and the generated flags print each key's help on one line: what the key is,
    not a story (timings and machine notes live in docs/)."""
    import re

    from minitron import config
    from minitron.cluster.config import LaunchConfig
    from minitron.deploy.config import DeployConfig
    from minitron.recipe import Recipe
    from minitron.training.config import TrainConfig

    lines = [line for cls in (Recipe, TrainConfig, DeployConfig, LaunchConfig) for line in config.describe(cls)]
    assert len(lines) > 100 and any(line.startswith("cpu_budget.distill_steps: ") for line in lines)
    for line in lines:
        key, _, rest = line.partition(": ")
        help_text = rest.rsplit(" (default: ", 1)[0].replace("e.g. ", "").replace("i.e. ", "")
        assert help_text, f"{key}: undocumented"
        assert len(help_text) <= 200 and not re.search(r"[.!?]\s+[A-Z]", help_text), f"{key}: {help_text}"
