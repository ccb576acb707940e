"""Family resolution and loading: aliases to hub ids, local folders by model_type, special ids looked
up by token text, chat templates, the generic hf: family, remote code only on request, and one clear
line when a hub model is neither cached nor downloadable."""
import json
import pytest
import torch

from dllm_rl import registry
from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.errors import UsageError
from dllm_rl.models.families import reference_of
from dllm_rl.pipeline import load_model, resolve_config

from .conftest import MASK, family_tokenizer, write_checkpoint


def adapter_for(name, **model):
    return load_model(RunConfig(model=ModelConfig(name=name, **model)), None)


@pytest.mark.parametrize("alias, hub_id", [("llada", "GSAI-ML/LLaDA-8B-Instruct"), ("llada-1.5", "GSAI-ML/LLaDA-1.5"),
                                           ("dream", "Dream-org/Dream-v0-Instruct-7B")])
def test_aliases_resolve_to_hub_ids(alias, hub_id):
    entry = registry.model(alias)
    assert reference_of(RunConfig(model=ModelConfig(name=alias)), entry) == hub_id
    assert registry.model(hub_id).name == alias  # the hub id itself selects the native family
    assert reference_of(RunConfig(model=ModelConfig(name=alias, path="/data/copy")), entry) == "/data/copy"


def test_folders_resolve_by_model_type(checkpoints, tmp_path):
    assert registry.model(str(checkpoints["llada"])).name == "llada"
    assert registry.model(str(checkpoints["dream"])).name == "dream"
    assert registry.model("hf:Some-org/some-dllm").name == "hf"
    with pytest.raises(UsageError, match="does not exist"):
        registry.model(str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="unknown model 'lladaa'.*Did you mean 'llada'"):
        registry.model("lladaa")


def test_presets_follow_the_family(checkpoints):
    """A LLaDA folder or llada-1.5 gets LLaDA's presets (LoRA, checkpointing); tiny's stay tiny's."""
    for name in (str(checkpoints["llada"]), "llada-1.5"):
        run = resolve_config("espo", "countdown", name)
        assert run.model.lora and run.model.gradient_checkpointing and run.rollout.block_length == 32
    assert resolve_config("espo", "countdown", "dream").rollout.block_length == 256
    assert not resolve_config("espo", "countdown", "tiny").model.lora


@pytest.mark.parametrize("family, stop", [("llada", "<|eot_id|>"), ("dream", "<|im_end|>")])
def test_special_ids_come_from_the_tokenizer(checkpoints, family, stop):
    adapter = adapter_for(str(checkpoints[family]))
    tok = family_tokenizer(family)
    assert adapter.mask_id == tok.convert_tokens_to_ids(MASK[family])
    assert adapter.eos_id == tok.convert_tokens_to_ids("<|endoftext|>") == adapter.pad_id
    assert tok.convert_tokens_to_ids(stop) in adapter.stop_ids and adapter.eos_id in adapter.stop_ids
    assert adapter.prompt_style == "chat"
    # the answer ends at the end-of-turn token, whatever follows
    text = adapter.decode(tok("<answer>7</answer>", add_special_tokens=False)["input_ids"]
                          + [tok.convert_tokens_to_ids(stop), 40, 41])
    assert text == "<answer>7</answer>"


def test_chat_prompts_use_the_family_template(checkpoints):
    llada, dream = adapter_for(str(checkpoints["llada"])), adapter_for(str(checkpoints["dream"]))
    msg = [{"role": "user", "content": "2+2?"}]
    assert llada.tokenizer.decode(llada.encode_prompt(msg)) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert dream.tokenizer.decode(dream.encode_prompt(msg)).endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_explicit_family_with_a_path_and_wrong_family(checkpoints):
    adapter = adapter_for("llada", path=str(checkpoints["llada"]))
    assert type(adapter.model).__name__ == "LLaDAModelLM"
    with pytest.raises(UsageError, match="holds a 'Dream' checkpoint, not llada"):
        adapter_for("llada", path=str(checkpoints["dream"]))


def test_dream_tokenizer_that_needs_remote_code_loads_without_it(tmp_path):
    """The released Dream tokenizer names a remote-code class; the family reads it with Qwen2's class."""
    write_checkpoint(tmp_path, "dream")
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    cfg_path.write_text(json.dumps(cfg))
    adapter = adapter_for(str(tmp_path))
    assert adapter.mask_id == family_tokenizer("dream").convert_tokens_to_ids("<|mask|>")
    assert adapter.tokenizer.decode(adapter.tokenizer("a+b", add_special_tokens=False)["input_ids"]) == "a+b"


def test_hf_prefix_on_a_native_checkpoint_uses_native_code(checkpoints):
    adapter = adapter_for("hf:" + str(checkpoints["dream"]))
    assert type(adapter.model).__name__ == "DreamModel" and adapter.shift_logits


@pytest.fixture
def bert_folder(tmp_path):
    """A transformers-native bidirectional masked LM (tiny BERT) with a [MASK] token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij0123456789+-*/= "])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                  sep_token="[SEP]", cls_token="[CLS]", eos_token="[SEP]")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_generic_family_loads_a_native_transformers_masked_lm(bert_folder):
    adapter = adapter_for("hf:" + str(bert_folder), prompt_style="direct")
    assert type(adapter.model).__name__ == "BertForMaskedLM"
    assert adapter.mask_id == 4 and adapter.eos_id == 3 and not adapter.shift_logits
    assert adapter.logits(torch.tensor([[5, 6, 4, 4]])).shape == (1, 4, 31)
    with pytest.raises(UsageError, match="no default LoRA targets.*query"):
        adapter_for("hf:" + str(bert_folder), prompt_style="direct", lora=True)
    lora = adapter_for("hf:" + str(bert_folder), prompt_style="direct", lora=True, lora_r=4, lora_targets=["query", "value"])
    assert hasattr(lora.model, "disable_adapter")


def test_remote_code_is_opt_in(bert_folder):
    cfg = json.loads((bert_folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (bert_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="--trust-remote-code"):
        adapter_for("hf:" + str(bert_folder), prompt_style="direct")


def test_offline_without_a_copy_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE=1 and an empty HF cache (a temp HF_HOME): exit 2, one line saying what to
    download and how to point at it. (huggingface_hub reads both variables at import, so its
    constants are set too; a subprocess would spend most of this test importing torch.)"""
    import huggingface_hub.constants as hf_constants

    from dllm_rl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", "dream", "--task", "countdown", "--set", "task.train_size=10"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for needle in ("Dream-org/Dream-v0-Instruct-7B", "hf download", "--model /path", "HF_HUB_OFFLINE"):
        assert needle in err


def test_cli_flags_map_to_model_settings():
    from dllm_rl.cli import _resolve

    run = _resolve(None, "countdown", "dream", None, None, (), None, None, True, "/some/adapter")
    assert run.model.trust_remote_code and run.model.adapter == "/some/adapter"
    assert not _resolve(None, "countdown", "dream", None, None, (), None, None).model.trust_remote_code
