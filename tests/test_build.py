"""`prefpipe build` end to end: real Prefect (ephemeral API), real files, real Parquet."""

from __future__ import annotations

import json

import datasets
import polars as pl

from pipeline.publish.store import list_versions, read_manifest
from tests.helpers import cli, cli_popen, hh_slice, write_recipe


def test_build_publishes_a_trl_ready_version(real_data, tmp_path):
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 300)
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "hh", ingest={"shard_rows": 100})
    root = tmp_path / "root"
    proc = cli("build", str(recipe), "--data-root", str(root))
    version = root / "datasets/hh/v0001"
    assert str(version) in proc.stdout and "published hh@v0001" in proc.stdout

    manifest = read_manifest(version)
    ingest, pairs = manifest["funnel"]
    assert ingest["rows_in"] == 300
    assert ingest["rows_in"] == ingest["rows_out"] + ingest["rows_dropped"]
    assert pairs["rows_in"] == ingest["rows_out"] == pairs["rows_out"] + pairs["rows_dropped"]
    assert manifest["rows"] == pairs["outputs_written"]
    assert manifest["rows_dropped"] == ingest["rows_dropped"] + pairs["rows_dropped"]
    assert manifest["inputs"][0]["sha256"] and manifest["recipe_hash"] and manifest["code_version"]
    assert len(list((version / "data").glob("*.parquet"))) == 3  # one pairs shard per ingest shard

    ds = datasets.load_dataset("parquet", data_dir=str(version / "data"), split="train")
    assert ds.num_rows == manifest["rows"]
    row = ds[0]
    # TRL's conversational preference format.
    assert row["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in row["chosen"]] == ["assistant"]
    assert [m["role"] for m in row["rejected"]] == ["assistant"]
    assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    dropped = pl.read_parquet(version / "dropped" / "*.parquet")
    assert len(dropped) == manifest["rows_dropped"]
    assert dropped["reason"].null_count() == 0 and set(dropped["stage"]) <= {"ingest", "pairs"}

    # The same recipe on the same input publishes nothing new and reports the existing version.
    again = cli("build", str(recipe), "--data-root", str(root))
    assert "unchanged" in again.stdout and list_versions(root, "hh") == [1]

    shown = cli("datasets", "show", "hh@v1", "--data-root", str(root), "--json")
    assert json.loads(shown.stdout)["rows"] == manifest["rows"]
    listed = cli("datasets", "list", "--data-root", str(root))
    assert "hh" in listed.stdout


def test_concurrent_builds_publish_distinct_complete_versions(real_data, tmp_path):
    root = tmp_path / "root"
    procs = []
    for i, n in enumerate([120, 80]):
        src = hh_slice(real_data, tmp_path / f"in{i}" / "hh.jsonl", n, start=i * 500)
        recipe = write_recipe(tmp_path / f"recipe{i}.yaml", [src], "shared")
        procs.append(cli_popen("build", str(recipe), "--data-root", str(root)))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert list_versions(root, "shared") == [1, 2]
    inputs = set()
    for v in ("v0001", "v0002"):
        m = read_manifest(root / "datasets/shared" / v)
        assert m["funnel"][0]["rows_in"] in (120, 80)
        inputs.add(m["funnel"][0]["rows_in"])
        assert pl.read_parquet(root / "datasets/shared" / v / "data/*.parquet").height == m["rows"]
    assert inputs == {120, 80}


def test_ingest_command_writes_shards_and_quarantine(real_data, tmp_path):
    out = tmp_path / "shards"
    proc = cli("ingest", str(real_data / "preference/autoj_testdata_pairwise.jsonl.gz"), "--out", str(out))
    assert str(out) in proc.stdout
    kept = pl.read_parquet(out / "part-*.parquet")
    dropped = pl.read_parquet(out / "dropped-ingest-*.parquet")
    assert kept.height + dropped.height == 1392


def test_missing_version_is_a_clear_error(tmp_path):
    proc = cli("datasets", "show", "nope@v3", "--data-root", str(tmp_path), check=False)
    assert proc.returncode == 1 and "no published versions of dataset 'nope'" in proc.stderr
    proc = cli("datasets", "show", "../etc", "--data-root", str(tmp_path), check=False)
    assert proc.returncode == 2 and "invalid dataset name" in proc.stderr


def test_a_stage_that_drops_every_row_is_said_and_can_fail_the_build(tmp_path):
    src = tmp_path / "in" / "bad.jsonl"
    src.parent.mkdir()
    src.write_text("".join(f'{{"chosen": "no transcript {i}", "rejected": "none"}}\n' for i in range(5)))
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "emptied")
    said = cli("build", str(recipe), "--data-root", str(tmp_path / "a"))
    assert "warning: stage ingest dropped every row it read (5: bad_transcript 5)" in said.stderr
    assert read_manifest(tmp_path / "a/datasets/emptied/v0001")["rows_dropped"] == 5  # published, all in dropped/
    failed = cli("build", str(recipe), "--data-root", str(tmp_path / "b"), "--fail-on-empty", check=False)
    assert failed.returncode == 1 and "--fail-on-empty" in failed.stderr.splitlines()[-1]


def _first_human_turn(row: bytes) -> str:
    text = json.loads(row)["chosen"]
    return text.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0]


def test_a_file_the_recipe_names_changed_in_place_is_a_new_build(real_data, tmp_path):
    """The build key covers the bytes of what a build reads besides its inputs: here the
    decontamination benchmarks. A benchmark file edited at the same path must not be answered
    with the earlier version ("unchanged"), whose rows it would now drop."""
    src = hh_slice(real_data, tmp_path / "in" / "hh.jsonl", 40)
    turns = [_first_human_turn(line) for line in src.read_bytes().splitlines()]
    leaked = next(t for t in turns if len(t.split()) >= 12)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "items.jsonl").write_text(json.dumps({"question": "What is the capital city of a country "
                                                               "that has no coastline at all?"}) + "\n")
    (bench / "registry.yaml").write_text(
        "root: .\nbenchmarks:\n  - {name: mine, file: items.jsonl, format: jsonl, text_fields: [question]}\n")
    recipe = write_recipe(tmp_path / "recipe.yaml", [src], "hh", decontam={"registry": str(bench / "registry.yaml")})
    root = tmp_path / "root"
    cli("build", str(recipe), "--data-root", str(root))
    first = read_manifest(root / "datasets/hh/v0001")
    assert first["funnel"][1]["stage"] == "decontam" and first["funnel"][1]["rows_dropped"] == 0

    # the same files: the earlier version is the answer
    assert "unchanged" in cli("build", str(recipe), "--data-root", str(root)).stdout
    # one benchmark item now is one of the input's prompts: a new version, without that row
    (bench / "items.jsonl").write_text(json.dumps({"question": leaked}) + "\n")
    again = cli("build", str(recipe), "--data-root", str(root))
    assert "unchanged" not in again.stdout and list_versions(root, "hh") == [1, 2]
    second = read_manifest(root / "datasets/hh/v0002")
    assert second["build_key"] != first["build_key"]
    assert second["funnel"][1]["rows_dropped"] >= 1
    assert second["rows"] == first["rows"] - second["funnel"][1]["rows_dropped"]


def test_a_local_model_rewritten_in_place_is_a_new_build_and_a_moved_copy_is_not(
        real_data, tmp_path, tiny_reward_model_dir):
    """A local model directory is identified by its files, not its path: a reward model retrained
    in place must not be answered from the old one's build or request cache; the same files moved
    elsewhere are the same build; names and manifests carry no machine's paths. The model is
    written as a path relative to the recipe and the CLI runs from another directory."""
    import shutil

    from pipeline.engines.tiny import build_tiny_model
    from tests.fixtures.models import _prompt_texts

    model = tmp_path / "models" / "rm"
    shutil.copytree(tiny_reward_model_dir, model)
    hh_slice(real_data, tmp_path / "recipes" / "hh.jsonl", 6)
    recipe = tmp_path / "recipes" / "rm.yaml"
    recipe.write_text(json.dumps({
        "inputs": [{"path": "hh.jsonl", "format": "hh_rlhf", "license": "MIT"}],
        "generate": {"include_source_responses": True},
        "annotate": {"method": "reward_model", "models": {"reward": {"model": "../models/rm", "engine": "transformers"}}},
        "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "rm"}}))
    root = tmp_path / "root"

    def build() -> str:
        return cli("build", str(recipe), "--data-root", str(root), cwd=tmp_path / "models").stdout

    def scores(version: int) -> tuple[list, set]:
        df = pl.read_parquet(root / f"datasets/rm/v{version:04d}/candidates").sort("candidate_id")
        return df["score"].to_list(), set(df["annotator"])

    build()
    first, names = scores(1)
    assert len(names) == 1 and (name := names.pop()).startswith("rm:rm@") and str(tmp_path) not in name
    manifest = read_manifest(root / "datasets/rm/v0001")
    assert manifest["models"]["annotator"]["reward"] == name.removeprefix("rm:")

    # retrained in place: other weights at the same path -> a new version with the new model's scores
    other = build_tiny_model(tmp_path / "retrained", _prompt_texts(real_data), sequence_classification=True, seed=5)
    shutil.copytree(other, model, dirs_exist_ok=True)
    assert "unchanged" not in build() and list_versions(root, "rm") == [1, 2]
    second, names = scores(2)
    assert second != first and names.pop() != name

    # the same files (and directory name) at another path: the same build
    shutil.move(model, tmp_path / "elsewhere" / "rm")
    recipe.write_text(recipe.read_text().replace("../models/rm", "../elsewhere/rm"))
    assert "unchanged" in build() and list_versions(root, "rm") == [1, 2]

    # a model path that is not a directory fails at load, naming the field
    recipe.write_text(recipe.read_text().replace("../elsewhere/rm", "./nowhere"))
    proc = cli("build", str(recipe), "--data-root", str(root), check=False)
    assert proc.returncode != 0 and "annotate.models.reward.model" in proc.stderr and "Traceback" not in proc.stderr


def test_a_registry_entry_for_a_local_directory_is_known_by_its_files(tmp_path, monkeypatch):
    """`source: local` registry names (data/models.yaml, $PREFPIPE_MODELS) key like a directory:
    rewriting the files behind the name changes the stage keys; a hub id stays a name."""
    from pipeline.engines.identity import model_identity
    from pipeline.recipe import load_recipe

    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights, first training run")
    (tmp_path / "models.yaml").write_text(json.dumps({"models": {"my-rm": {"source": "local", "path": str(model)}}}))
    monkeypatch.setenv("PREFPIPE_MODELS", str(tmp_path / "models.yaml"))
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "r.yaml").write_text(json.dumps({
        "inputs": [{"path": "in.jsonl"}], "generate": {"models": [{"name": "my-rm", "engine": "transformers"}]},
        "annotate": {"method": "reward_model", "models": {"reward": {"model": "my-rm"}}},
        "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "x"}}))

    def keys() -> tuple[str, str]:
        recipe = load_recipe(tmp_path / "r.yaml")
        return recipe.stage_config("annotate"), recipe.stage_config("generate")

    before, name = keys(), model_identity("my-rm")
    assert name.startswith("my-rm@") and model_identity("Qwen/served-elsewhere") == "Qwen/served-elsewhere"
    (model / "model.safetensors").write_bytes(b"weights, second training run")
    after = keys()
    assert model_identity("my-rm") != name and after[0] != before[0] and after[1] != before[1]


def test_a_hub_id_is_known_by_the_cached_snapshot_it_loads(tmp_path, monkeypatch):
    """A hub id in the local Hugging Face cache keys by the commit `main` points to (what the loaders
    read offline): the cache updated to a new upload changes the stage keys, the same snapshot keeps
    them; an id that is not cached stays its name."""
    import huggingface_hub.constants

    from pipeline.engines.identity import model_identity
    from pipeline.engines.packaged import ModelSpec, resolve
    from pipeline.recipe import load_recipe

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    repo = hub / "models--acme--rm"

    def upload(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "r.yaml").write_text(json.dumps({
        "inputs": [{"path": "in.jsonl"}], "generate": {"models": [{"name": "acme/policy", "engine": "transformers"}]},
        "annotate": {"method": "reward_model", "models": {"reward": {"model": "acme/rm"}}},
        "pairs": {"rule": "best_vs_worst"}, "output": {"dataset": "x"}}))

    def key() -> str:
        return load_recipe(tmp_path / "r.yaml").stage_config("annotate")

    assert model_identity("acme/rm") == "acme/rm" and resolve("acme/rm") == "acme/rm"  # a hub fetches it
    uncached = key()
    upload("a" * 40)
    assert model_identity("acme/rm") == "acme/rm@" + "a" * 12 and model_identity("acme/policy") == "acme/policy"
    assert resolve("acme/rm") == str(repo / "snapshots" / ("a" * 40))  # the engines load what the key names
    first = key()
    assert first != uncached and key() == first
    upload("b" * 40)
    assert model_identity("acme/rm") == "acme/rm@" + "b" * 12 and key() != first
    assert resolve("acme/rm") == str(repo / "snapshots" / ("b" * 40))
    # a registry entry that names a hub id: the same commit in its identity and its load
    registry = {"rm": ModelSpec(source="hub", id="acme/rm")}
    assert resolve("rm", registry) == str(repo / "snapshots" / ("b" * 40))
    monkeypatch.setattr("pipeline.engines.packaged.load_registry", lambda: registry)
    assert model_identity("rm") == "rm@" + "b" * 12
