"""Tiny random checkpoints of the real families (2 layers, hidden 64) with small character-level
tokenizers that carry each family's special tokens and chat template, written as checkpoint folders
the loaders read exactly like the released ones."""
import pytest
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dllm_rl.models.dream import DreamConfig, DreamModel
from dllm_rl.models.families import DREAM_CHAT_TEMPLATE, LLADA_CHAT_TEMPLATE
from dllm_rl.models.llada import LLaDAConfig, LLaDAModelLM

CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n",)
# Each family's special tokens (the released ids are 126080.. for LLaDA and 151643.. for Dream; here
# they sit at small ids, in a different place per family, so nothing may assume an id).
SPECIALS = {
    "llada": ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|mdm_mask|>", "<|unk|>"),
    "dream": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>", "<|unk|>"),
}
TOKENS = {
    "llada": dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|unk|>"),
    "dream": dict(bos_token="<|beginoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|unk|>"),
}
TEMPLATES = {"llada": LLADA_CHAT_TEMPLATE, "dream": DREAM_CHAT_TEMPLATE}
MASK = {"llada": "<|mdm_mask|>", "dream": "<|mask|>"}


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """Characters plus the family's special tokens (LLaDA's after the characters, Dream's before)."""
    vocab_order = CHARS + SPECIALS[family] if family == "llada" else SPECIALS[family] + CHARS
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab_order)}, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS[family]])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **TOKENS[family])
    tok.chat_template = TEMPLATES[family]
    return tok


def tiny_model(family: str, tokenizer=None, seed: int = 0, std: float = 0.2, **overrides):
    """A 2-layer, hidden-64 random model of ``family`` whose special ids come from ``tokenizer``."""
    tok = tokenizer or family_tokenizer(family)
    ids = dict(mask_token_id=tok.convert_tokens_to_ids(MASK[family]), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "llada":
        config = LLaDAConfig(**{**dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=len(tok),
                                       embedding_size=128, max_sequence_length=1024), **ids, **overrides})
        model = LLaDAModelLM(config)
    else:
        config = DreamConfig(**{**dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                       num_hidden_layers=2, vocab_size=128, max_position_embeddings=1024,
                                       bos_token_id=tok.bos_token_id), **ids, **overrides})
        model = DreamModel(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


def write_checkpoint(folder, family: str, seed: int = 0, **overrides):
    """A checkpoint folder (config.json, model.safetensors, tokenizer files) like the released ones."""
    tok = family_tokenizer(family)
    tiny_model(family, tok, seed, **overrides).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint folder per family, shared by the tests of a session."""
    root = tmp_path_factory.mktemp("family-checkpoints")
    return {f: write_checkpoint(root / f"tiny-{f}", f) for f in ("llada", "dream")}
