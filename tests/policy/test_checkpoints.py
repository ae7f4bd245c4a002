"""leafe.policy.checkpoints: model references checked before anything loads."""

import json

import pytest

from leafe.config import ConfigError
from leafe.policy.checkpoints import check_model_reference, looks_like_path


def test_paths_and_hub_ids_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_path("/abs/model") and looks_like_path("./m") and looks_like_path("~/m")
    assert looks_like_path("a/b/c")  # more parts than namespace/name
    assert not looks_like_path("Qwen/Qwen2.5-7B-Instruct") and not looks_like_path("gpt2")
    assert not looks_like_path("models/mine")  # namespace/name is a hub id, even beside a models/ folder
    assert not looks_like_path("s3://bucket/org/model")


def test_good_references_pass(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    for reference in ("smollm2-135m-instruct", "Embedded", "Qwen/Qwen2.5-7B-Instruct", str(model), str(adapter)):
        check_model_reference(reference, "policy.model")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: "", "policy.model: empty"),
        (lambda root: str(root / "missing"), "policy.model: no such model folder: .*missing"),
        (lambda root: (root / "file").write_text("x") and str(root / "file"), "policy.model: .*file is a file"),
        (lambda root: (root / "empty").mkdir() or str(root / "empty"), "policy.model: .*empty holds no config.json"),
    ],
)
def test_bad_references_name_the_field(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        check_model_reference(make(tmp_path), "policy.model")


def test_an_adapter_whose_base_is_missing_names_the_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=r"run.init_from \(the base of the adapter .*\): no such model folder"):
        check_model_reference(str(adapter), "run.init_from")
    (adapter / "adapter_config.json").write_text("{")
    with pytest.raises(ConfigError, match="run.init_from: .*adapter_config.json: not valid JSON"):
        check_model_reference(str(adapter), "run.init_from")


def test_vllm_layouts_only_need_to_exist(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_text("x")
    check_model_reference(str(gguf), "policy.model", hf_layout=False)  # vLLM reads GGUF files
    check_model_reference(str(tmp_path), "policy.model", hf_layout=False)  # and other folder layouts
    check_model_reference("s3://bucket/org/model", "policy.model", hf_layout=False)
    with pytest.raises(ConfigError, match="policy.model: no such model path"):
        check_model_reference(str(tmp_path / "gone.gguf"), "policy.model", hf_layout=False)
